//go:build !race && linux && !386

package quietconn

import (
	"syscall"
	"unsafe"
)

// sysRead is one read(2) on fd into b, without the runtime's bookkeeping.
func sysRead(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), e
}

// sysWrite is one send(2) of b on fd, without the runtime's bookkeeping.
// MSG_NOSIGNAL: a peer that has gone is EPIPE, not a signal.
func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}
