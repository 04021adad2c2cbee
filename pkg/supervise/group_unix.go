//go:build unix

package supervise

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// Each program leads its own process group (pgid = its pid), so a signal to
// -pid reaches everything it spawned that did not leave the group.

func configure(cmd *exec.Cmd) { cmd.SysProcAttr = sysProcAttr() }

// terminate asks the program's whole group to stop.
func terminate(p *os.Process) error { return signalGroup(p.Pid, syscall.SIGTERM) }

// kill stops the program's whole group at once.
func kill(p *os.Process) error { return signalGroup(p.Pid, syscall.SIGKILL) }

func signalGroup(pgid int, sig syscall.Signal) error {
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil // nothing left to signal
	}
	return err
}

func signalTerm(pgid int) error { return signalGroup(pgid, syscall.SIGTERM) }
func signalKill(pgid int) error { return signalGroup(pgid, syscall.SIGKILL) }
