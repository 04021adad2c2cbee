package packstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Snapshot is what Store.Snapshot copied, counted at the moment of the
// copy.
type Snapshot struct {
	// Packs are the pack files of the copy, relative to its directory and
	// slash-separated ("packs/pack-000003.dat").
	Packs []string
	// Active is the active pack, and ActiveEnd its committed end at the
	// moment of the copy. The copy's file is a hard link that goes on
	// growing as the store writes: only its first ActiveEnd bytes belong to
	// the copy. A restore writes the file cut to ActiveEnd, which is the
	// pack_end the copied index holds, so the store opens it as it was.
	Active    string
	ActiveEnd int64
	Chunks    int
	Sessions  int
	// SealedSessions counts the sealed sessions among Sessions.
	SealedSessions int
	// PackBytes are the bytes of the packs as copied (the active one up to
	// ActiveEnd).
	PackBytes int64
}

// Snapshot writes a consistent copy of the store into dir while it keeps
// serving: index.db, written from one read transaction, and every pack
// hard-linked into dir/packs. Packs are only ever appended to, and
// compaction removes whole packs, so a link keeps the bytes the copied
// index points at. The read transaction begins, the active pack's end is
// read and the packs are linked under the commit lock, so no commit lands
// in between; the index is written after the lock is released, from that
// transaction. dir must be on the store's file system. Puts go on
// throughout; only one whose commit must grow the index's memory map waits
// for the index to be written out.
func (s *Store) Snapshot(ctx context.Context, dir string) (*Snapshot, error) {
	if err := os.MkdirAll(filepath.Join(dir, "packs"), 0o700); err != nil {
		return nil, err
	}
	tx, linked, snap, err := s.beginSnapshot(dir)
	if err != nil {
		return nil, err
	}
	// A read-only transaction: rolling it back only releases it.
	defer func() { _ = tx.Rollback() }()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	used := map[uint32]bool{}
	err = tx.Bucket(bucketChunks).ForEach(func(_, v []byte) error {
		used[decodeLocation(v).Pack] = true
		snap.Chunks++
		return nil
	})
	if err != nil {
		return nil, err
	}
	for n := range used {
		if !linked[n] {
			return nil, fmt.Errorf("pack %d, which the index points into, is gone", n)
		}
	}
	err = tx.Bucket(bucketSessions).ForEach(func(_, v []byte) error {
		var sess struct {
			Sealed bool `json:"sealed"`
		}
		if err := json.Unmarshal(v, &sess); err != nil {
			return err
		}
		snap.Sessions++
		if sess.Sealed {
			snap.SealedSessions++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := tx.CopyFile(filepath.Join(dir, "index.db"), 0o600); err != nil {
		return nil, fmt.Errorf("copy the chunk index: %w", err)
	}
	return snap, nil
}

// beginSnapshot, under the commit lock, begins the read transaction the
// copy's index comes from, reads the active pack's committed end and links
// every pack into dir.
func (s *Store) beginSnapshot(dir string) (*bolt.Tx, map[uint32]bool, *Snapshot, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	tx, err := s.db.Begin(false)
	if err != nil {
		return nil, nil, nil, err
	}
	s.mu.Lock()
	active, end := s.activeN, s.activeSz
	s.mu.Unlock()
	snap := &Snapshot{Packs: []string{}, Active: "packs/" + filepath.Base(s.packPath(active)), ActiveEnd: end}
	linked := map[uint32]bool{}
	entries, err := os.ReadDir(s.packDir())
	if err != nil {
		_ = tx.Rollback() // read-only; the listing's error is the one to report
		return nil, nil, nil, err
	}
	for _, e := range entries {
		var n uint32
		if _, err := fmt.Sscanf(e.Name(), "pack-%06d.dat", &n); err != nil || !strings.HasSuffix(e.Name(), ".dat") || n > active {
			continue
		}
		err := os.Link(filepath.Join(s.packDir(), e.Name()), filepath.Join(dir, "packs", e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // compacted away meanwhile; checked against the index later
		}
		if err != nil {
			_ = tx.Rollback() // read-only; the link's error is the one to report
			return nil, nil, nil, fmt.Errorf("link pack %d: %w", n, err)
		}
		linked[n] = true
		snap.Packs = append(snap.Packs, "packs/"+e.Name())
		size := end
		if n != active {
			fi, err := os.Stat(filepath.Join(dir, "packs", e.Name()))
			if err != nil {
				_ = tx.Rollback() // read-only; the stat's error is the one to report
				return nil, nil, nil, err
			}
			size = fi.Size()
		}
		snap.PackBytes += size
	}
	if !linked[active] {
		_ = tx.Rollback() // read-only
		return nil, nil, nil, fmt.Errorf("the active pack %d is missing", active)
	}
	return tx, linked, snap, nil
}
