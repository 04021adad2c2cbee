package gateway

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpCloseWait is Linux's TCP_CLOSE_WAIT: the peer has sent its FIN.
const tcpCloseWait = 8

// clientClosed waits until the client's side of raw is closed or reset
// (true), or quit closes (false). It waits on the runtime's poller for the
// socket to turn readable and peeks, never consuming a byte: nothing to
// read means closed. Bytes that wait (a pipelined request, or TLS's
// close_notify before the FIN) leave the socket readable, so from then on
// its TCP state is checked a few times a second instead.
func clientClosed(raw syscall.RawConn, quit <-chan struct{}) bool {
	pending, err := awaitReadable(raw)
	switch {
	case err != nil:
		return false // the deadline stop set
	case !pending:
		return true // readable with nothing to read: closed or reset
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return false
		case <-t.C:
			if closeWait(raw) {
				return true
			}
		}
	}
}

func closeWait(raw syscall.RawConn) bool {
	var state uint8
	_ = raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state == tcpCloseWait
}
