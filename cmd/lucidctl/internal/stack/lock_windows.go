//go:build windows

package stack

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// See lock_unix.go: the same with LockFileEx.

func acquireLock(path string) (release func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	ol := new(windows.Overlapped)
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	if err != nil {
		f.Close()
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			return nil, errLocked
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

func lockHeld(path string) bool {
	release, err := acquireLock(path)
	if err != nil {
		return errors.Is(err, errLocked)
	}
	release()
	return false
}
