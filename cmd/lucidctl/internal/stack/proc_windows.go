//go:build windows

package stack

import (
	"syscall"

	"golang.org/x/sys/windows"
)

// signalStop has no signal to send on Windows: the supervisor watches the
// stop file that down writes.
func signalStop(int) error { return nil }

func detachAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{CreationFlags: windows.DETACHED_PROCESS | windows.CREATE_NEW_PROCESS_GROUP}
}
