//go:build race && linux && !386

package quietconn

import (
	"errors"
	"syscall"
)

// Under the race detector the calls go through package syscall, whose
// Read and Write tell the detector that what was written to a socket
// happens before it is read at the other end, and which bytes of a buffer
// the kernel wrote: raw system calls would report races that cannot
// happen, and miss real ones.
func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), b)
	return n, errnoOf(err)
}

func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), b)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if err == nil || !errors.As(err, &e) {
		return 0
	}
	return e
}
