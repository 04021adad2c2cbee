package gateway

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// canPark: a parked connection's wait needs a peek at its socket.
const canPark = true

// awaitBytes waits on the runtime's poller until raw is readable, and
// reports whether bytes wait there (false: the client closed it, or the
// read deadline passed). It peeks and never consumes a byte.
func awaitBytes(raw syscall.RawConn) bool {
	var data bool
	err := raw.Read(func(fd uintptr) bool {
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
	return err == nil && data
}
