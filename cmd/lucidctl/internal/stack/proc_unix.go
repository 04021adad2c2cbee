//go:build unix

package stack

import "syscall"

// signalStop asks the supervisor to stop at once; the stop file is the
// portable fallback it also watches.
func signalStop(pid int) error { return syscall.Kill(pid, syscall.SIGTERM) }

// detachAttr starts the background supervisor in a session of its own, so
// closing the terminal does not stop it.
func detachAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
