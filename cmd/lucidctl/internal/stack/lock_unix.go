//go:build unix

package stack

import (
	"errors"
	"os"
	"syscall"
)

// The supervisor holds an exclusive flock on <state_dir>/supervisor.lock for
// its whole life. The kernel drops the lock when the process dies, however
// it dies, so "the lock is held" is the truth about whether a supervisor
// runs: a zombie, a stale state file or a recycled pid cannot fake it.

func acquireLock(path string) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errLocked
		}
		return nil, err
	}
	// The lock file is never written: closing it only drops the lock.
	return func() { _ = f.Close() }, nil
}

func lockHeld(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }() // only probed, never written
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}
