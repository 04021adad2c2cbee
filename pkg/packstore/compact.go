package packstore

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	bolt "go.etcd.io/bbolt"
)

// CompactReport says what a compaction did.
type CompactReport struct {
	Packs []uint32 `json:"packs"`
	// Skipped packs hold a damaged record; they stay until it is repaired.
	Skipped        []uint32 `json:"skipped,omitempty"`
	MovedChunks    int      `json:"moved_chunks"`
	ReclaimedBytes int64    `json:"reclaimed_bytes"`
}

// Compact rewrites every closed pack whose live records fill less than
// half of it: the live records are appended to the active pack through the
// writer (so they are group-committed like any Put), the index is pointed
// at them, and the old pack is removed. Reads go on throughout: a read that
// meets a pack removed under it looks the chunk up again.
func (s *Store) Compact(ctx context.Context) (*CompactReport, error) {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	type rec struct {
		key string // the chunk's index key (owner-scoped id)
		loc Location
	}
	live := map[uint32][]rec{}
	liveBytes := map[uint32]int64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			loc := decodeLocation(v)
			live[loc.Pack] = append(live[loc.Pack], rec{string(k), loc})
			liveBytes[loc.Pack] += int64(loc.Length)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(s.packDir())
	if err != nil {
		return nil, err
	}
	rep := &CompactReport{Packs: []uint32{}}
	for _, e := range entries {
		var n uint32
		if _, err := fmt.Sscanf(e.Name(), "pack-%06d.dat", &n); err != nil {
			continue
		}
		s.mu.Lock()
		active := s.activeN
		s.mu.Unlock()
		fi, err := e.Info()
		if err != nil || n >= active || fi.Size() == 0 || liveBytes[n]*2 >= fi.Size() {
			continue
		}
		moved, skip := 0, false
		for _, r := range live[n] {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			if err := s.move(ctx, r.key, r.loc); err != nil {
				if errors.Is(err, ErrCorrupt) {
					// A damaged record stays where the scrub can report
					// it; its pack stays too. Other packs go on.
					rep.Skipped = append(rep.Skipped, n)
					skip = true
					break
				}
				return rep, fmt.Errorf("compact pack %d: %w", n, err)
			}
			moved++
		}
		rep.MovedChunks += moved
		if skip {
			continue
		}
		dropped, err := s.dropPack(n)
		if err != nil {
			return rep, err
		}
		if dropped {
			rep.Packs = append(rep.Packs, n)
			rep.ReclaimedBytes += fi.Size() - liveBytes[n]
		}
	}
	return rep, s.recountDead()
}

// recountDead sets the dead-bytes figure from what is on disk and what
// the index still points at.
func (s *Store) recountDead() error {
	st, err := s.Stats()
	if err != nil {
		return err
	}
	var live int64
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(_, v []byte) error {
			live += int64(decodeLocation(v).Length)
			return nil
		})
	})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyDeadBytes, binary.BigEndian.AppendUint64(nil, uint64(max(st.PackBytes-live, 0))))
	})
}

// move copies the record of the chunk with index key key, checked, to the
// active pack.
func (s *Store) move(ctx context.Context, key string, loc Location) error {
	owner, id := unscoped(key)
	f, err := s.reader(loc.Pack)
	if err != nil {
		return err
	}
	raw := make([]byte, loc.Length)
	if _, err := f.ReadAt(raw, loc.Offset); err != nil {
		return err
	}
	if _, _, _, err := decodeRecord(raw); err != nil {
		return fmt.Errorf("chunk %s: %w", id, err)
	}
	b, err := hex.DecodeString(id)
	if err != nil {
		return err
	}
	req := &writeReq{id: [32]byte(b), owner: owner, raw: raw, from: &loc, reply: make(chan error, 1)}
	if err := s.enqueue(ctx, req); err != nil {
		return err
	}
	return <-req.reply
}

// dropPack removes a compacted pack if the index no longer points into
// it (a record that could not be moved keeps it).
func (s *Store) dropPack(n uint32) (bool, error) {
	var stillUsed bool
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(_, v []byte) error {
			if decodeLocation(v).Pack == n {
				stillUsed = true
			}
			return nil
		})
	})
	if err != nil || stillUsed {
		return false, err
	}
	s.readMu.Lock()
	if f, ok := s.readers[n]; ok {
		delete(s.readers, n) // readers holding it finish; the next ones look again
		// Only ever read, so closing it cannot lose data.
		defer func() { _ = f.Close() }()
	}
	s.readMu.Unlock()
	if err := os.Remove(s.packPath(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return true, syncDir(s.packDir())
}
