package snapshot

import (
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// CopyBolt writes a consistent copy of db to path (mode 0600) while db
// keeps serving, and calls count, when set, in the same read transaction,
// so what it counts is what the copy holds.
func CopyBolt(db *bolt.DB, path string, count func(tx *bolt.Tx) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return db.View(func(tx *bolt.Tx) error {
		if count != nil {
			if err := count(tx); err != nil {
				return err
			}
		}
		if err := tx.CopyFile(path, 0o600); err != nil {
			return fmt.Errorf("copy %s: %w", filepath.Base(path), err)
		}
		return nil
	})
}
