package chainstore

import (
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/chain"
)

// CopyTo writes a consistent copy of the store to path (mode 0600) while
// it keeps serving, and returns the head block's header in the copy (nil
// for an empty chain).
func (s *Store) CopyTo(path string) (*chain.Header, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	var head *chain.Header
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyHeight); v != nil {
			b, err := decodeBlock(tx.Bucket(bucketBlocks).Get(v))
			if err != nil {
				return err
			}
			if head, err = b.Header(); err != nil {
				return fmt.Errorf("head block: %w", err)
			}
		}
		return tx.CopyFile(path, 0o600)
	})
	if err != nil {
		return nil, fmt.Errorf("copy the chain store: %w", err)
	}
	return head, nil
}
