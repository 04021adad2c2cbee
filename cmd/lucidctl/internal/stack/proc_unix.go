//go:build unix

package stack

import (
	"errors"
	"syscall"
)

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// signalStop asks the supervisor to stop at once; the stop file is the
// portable fallback it also watches.
func signalStop(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }

// detachAttr starts the background supervisor in a session of its own, so
// closing the terminal does not stop it.
func detachAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
