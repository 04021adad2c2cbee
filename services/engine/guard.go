package engine

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/chain"
)

// guard remembers, on disk and fsynced, every block this node has signed,
// by height, before the block is proposed. A node that proposes again at a
// height (after a restart, or regaining leadership) re-proposes the block it
// signed there instead of signing a second, different one.
type guard struct{ db *bolt.DB }

var bucketSigned = []byte("signed")

func openGuard(path string) (*guard, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open signing guard %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketSigned)
		return err
	}); err != nil {
		_ = db.Close() // the open error is the one to report
		return nil, err
	}
	return &guard{db: db}, nil
}

func (g *guard) close() error { return g.db.Close() }

func heightKey(h uint64) []byte { return binary.BigEndian.AppendUint64(nil, h) }

// signed returns the block this node signed at height, or nil.
func (g *guard) signed(height uint64) (*chain.Block, error) {
	var raw []byte
	err := g.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketSigned).Get(heightKey(height)); v != nil {
			raw = append([]byte(nil), v...)
		}
		return nil
	})
	if err != nil || raw == nil {
		return nil, err
	}
	return chain.DecodeBlock(raw)
}

// record stores b as signed at its height, durably, unless a block is
// already recorded there (which is then returned and must be used).
func (g *guard) record(b *chain.Block) (*chain.Block, error) {
	enc, err := b.Encode()
	if err != nil {
		return nil, err
	}
	var existing []byte
	err = g.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketSigned)
		if v := bk.Get(heightKey(b.Height)); v != nil {
			existing = append([]byte(nil), v...)
			return nil
		}
		return bk.Put(heightKey(b.Height), enc)
	})
	if err != nil {
		return nil, err
	}
	if existing != nil {
		return chain.DecodeBlock(existing)
	}
	return b, nil
}

// forget drops records below height, which the chain has settled.
func (g *guard) forget(below uint64) error {
	return g.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSigned).Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < below; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}
