// Package atomicfile writes files whole or not at all, and durably: a power
// cut leaves a file with its old content or all of its new content, never
// an empty or partial one. The new content goes to a temporary file in the
// same folder, is fsynced, renamed over the file, and the folder is fsynced
// so that the rename itself survives.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// Write replaces the file at path with data, with mode. The folder must
// exist.
func Write(path string, data []byte, mode os.FileMode) error {
	return WriteFunc(path, mode, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// WriteFunc replaces the file at path with what write writes to the new
// file, with mode. The folder must exist. When write fails, the file is
// left as it was.
func WriteFunc(path string, mode os.FileMode, write func(*os.File) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err := fill(f, mode, write); err != nil {
		_ = f.Close()
		_ = os.Remove(tmp) // the rename did not happen: nothing refers to it
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp) // likewise
		return err
	}
	return SyncDir(dir)
}

// fill writes a new file's content durably, and closes it.
func fill(f *os.File, mode os.FileMode, write func(*os.File) error) error {
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := write(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// SyncDir makes the entries of the folder dir durable: a file created,
// renamed or removed there.
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // a folder cannot be opened for fsync there; NTFS journals its entries
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // opened for reading: Sync says what matters
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
