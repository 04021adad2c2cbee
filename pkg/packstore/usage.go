package packstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketUsage keeps each owner's usage: owner → bytes(8) ‖ chunks(8). It
// is kept in the same transactions that add and remove the owner's chunks,
// so it is exact; a store from before it is counted once when opened.
// Chunks stored before owners (the empty owner) are not counted.
var bucketUsage = []byte("usage")

// Usage is what one owner's chunks take: their records on disk (each a
// few dozen bytes more than its data) and how many there are.
type Usage struct {
	Bytes  uint64 `json:"bytes"`
	Chunks uint64 `json:"chunks"`
}

// ErrQuota is wrapped by a *QuotaError.
var ErrQuota = errors.New("the owner's chunks would take more than its quota")

// QuotaError refuses a new chunk that would take its owner past its quota.
type QuotaError struct {
	// Used is what the owner's chunks took when the chunk was refused,
	// Quota what they may take, and Record what the chunk would add.
	Used, Quota, Record uint64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("%v: %d bytes stored, %d allowed, a new record of %d", ErrQuota, e.Used, e.Quota, e.Record)
}

// Is makes errors.Is(err, ErrQuota) hold.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

// AddWithin is Add for an owner whose chunks may take at most quota
// bytes on disk (0: no bound). A new chunk that would take them past it
// is refused with a *QuotaError, and nothing is written; a chunk the owner
// has stored already is not new, so a retried upload, or the upload that
// repairs a damaged chunk, is never refused. The check and the write are
// one step of the store's single writer, so uploads at once cannot pass
// the quota together.
func (s *Store) AddWithin(ctx context.Context, owner string, data []byte, m *Member, quota uint64) (id string, isNew bool, err error) {
	return s.add(ctx, owner, data, m, quota)
}

// Usage returns what owner's chunks take.
func (s *Store) Usage(owner string) (Usage, error) {
	var u Usage
	err := s.db.View(func(tx *bolt.Tx) error {
		u = usageOf(tx.Bucket(bucketUsage), owner)
		return nil
	})
	return u, err
}

func usageOf(b *bolt.Bucket, owner string) Usage {
	if owner == "" {
		return Usage{}
	}
	v := b.Get([]byte(owner))
	if len(v) != 16 {
		return Usage{}
	}
	return Usage{Bytes: binary.BigEndian.Uint64(v), Chunks: binary.BigEndian.Uint64(v[8:])}
}

// changeUsage adds bytes and chunks (either may be negative) to owner's
// usage in tx. An owner left with nothing is removed.
func changeUsage(tx *bolt.Tx, owner string, bytes, chunks int64) error {
	if owner == "" || (bytes == 0 && chunks == 0) {
		return nil
	}
	b := tx.Bucket(bucketUsage)
	u := usageOf(b, owner)
	u.Bytes = uint64(max(int64(u.Bytes)+bytes, 0))
	u.Chunks = uint64(max(int64(u.Chunks)+chunks, 0))
	if u.Chunks == 0 {
		return b.Delete([]byte(owner))
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), u.Bytes)
	return b.Put([]byte(owner), binary.BigEndian.AppendUint64(v, u.Chunks))
}

// countUsage creates the usage bucket of a store that has none, from the
// chunks it holds.
func countUsage(tx *bolt.Tx) error {
	if tx.Bucket(bucketUsage) != nil {
		return nil
	}
	if _, err := tx.CreateBucket(bucketUsage); err != nil {
		return err
	}
	totals := map[string]Usage{}
	err := tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
		owner, _ := unscoped(string(k))
		if owner == "" || len(v) != 16 {
			return nil
		}
		u := totals[owner]
		u.Bytes += uint64(decodeLocation(v).Length)
		u.Chunks++
		totals[owner] = u
		return nil
	})
	if err != nil {
		return err
	}
	for owner, u := range totals {
		if err := changeUsage(tx, owner, int64(u.Bytes), int64(u.Chunks)); err != nil {
			return err
		}
	}
	return nil
}
