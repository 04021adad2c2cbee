//go:build windows

package supervise

import (
	"os"
	"os/exec"
	"syscall"
)

// Windows has no SIGTERM and no process groups in the Unix sense: a program
// gets its own console group, and stopping it kills it.

func configure(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP}
}

func terminate(p *os.Process) error { return p.Kill() }

func kill(p *os.Process) error { return p.Kill() }

func groupAlive(int) bool { return false }

func signalTerm(int) error { return nil }
func signalKill(int) error { return nil }
