//go:build unix && !linux

package supervise

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// groupAlive reports whether any process is left in group pgid.
func groupAlive(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }
