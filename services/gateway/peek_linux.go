package gateway

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// canPeek: the client watch and idle parking look at a socket without
// reading it.
const canPeek = true

// awaitReadable waits on the runtime's poller until raw is readable, then
// peeks without consuming a byte: data reports whether bytes wait (false:
// the peer closed or reset the socket). err is the wait's own: a read
// deadline, or the connection closed under it.
func awaitReadable(raw syscall.RawConn) (data bool, err error) {
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			return false // nothing yet: wait for the poller
		case err == nil && n > 0:
			data = true
		}
		return true
	})
	return data, err
}
