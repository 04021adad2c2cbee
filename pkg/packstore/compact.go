package packstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// CompactReport says what a compaction did.
type CompactReport struct {
	Packs []uint32 `json:"packs"`
	// Skipped packs hold a damaged record; they stay until it is repaired.
	Skipped        []uint32 `json:"skipped,omitempty"`
	MovedChunks    int      `json:"moved_chunks"`
	ReclaimedBytes int64    `json:"reclaimed_bytes"`
	// ReencryptedChunks were sealed with a previous key and are now
	// sealed with the current one (counted among MovedChunks too).
	ReencryptedChunks int `json:"reencrypted_chunks"`
}

// Compact rewrites every closed pack whose live records fill less than
// half of it, or that holds a live record sealed with a previous key: the
// live records are appended to the active pack through the writer (so they
// are group-committed like any Put), those of a previous key re-encrypted
// with the current one, the index is pointed at them, and the old pack is
// removed. An active pack holding records of a previous key is closed
// first, so no copy under the old key stays behind, and so is one of at
// least a mebibyte that is more than half dead. Reads go on
// throughout: a read that meets a pack removed under it looks the chunk up
// again.
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
	// Packs holding a live record of a previous key. Finding them reads
	// each live record's header, so only while the ring has other keys.
	stale := map[uint32]bool{}
	if s.rekeying() {
		unread := false
		for n, recs := range live {
			for _, r := range recs {
				kid, encrypted, err := s.headerKey(r.loc)
				if err != nil {
					unread = true
					continue // gone meanwhile, or damaged: the scrub's to report
				}
				if encrypted && kid != s.key {
					stale[n] = true
					break
				}
			}
		}
		if len(stale) == 0 && !unread {
			// Every live record is under the current key: no version 1
			// record needs the original key any more, so later
			// compactions need not look.
			if err := s.forgetLegacy(); err != nil {
				return nil, err
			}
		}
	}
	s.mu.Lock()
	wasActive, activeSize := s.activeN, s.activeSz
	s.mu.Unlock()
	switch {
	case stale[wasActive]:
		if err := s.closeActive(ctx); err != nil {
			return nil, fmt.Errorf("close the active pack to re-encrypt it: %w", err)
		}
	case activeSize >= closeDeadActive && liveBytes[wasActive]*2 < activeSize:
		// Mostly deleted records: without this they would wait for the
		// pack to fill (a gigabyte, by default), and their owners' quota
		// with them.
		if err := s.closeActive(ctx); err != nil {
			return nil, fmt.Errorf("close the active pack to compact it: %w", err)
		}
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
		if err != nil || n >= active || fi.Size() == 0 || (liveBytes[n]*2 >= fi.Size() && !stale[n]) {
			continue
		}
		moved, skip := 0, false
		for _, r := range live[n] {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			rekeyed, err := s.move(ctx, r.key, r.loc)
			if err != nil {
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
			if rekeyed {
				rep.ReencryptedChunks++
			}
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
// active pack; a record sealed with a previous key is re-encrypted with
// the current one (rekeyed).
func (s *Store) move(ctx context.Context, key string, loc Location) (rekeyed bool, err error) {
	owner, id := unscoped(key)
	f, err := s.reader(loc.Pack)
	if err != nil {
		return false, err
	}
	raw := make([]byte, loc.Length)
	if _, err := f.ReadAt(raw, loc.Offset); err != nil {
		return false, err
	}
	r, err := decodeRecord(raw)
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", id, err)
	}
	b, err := hex.DecodeString(id)
	if err != nil {
		return false, err
	}
	if kid, encrypted := s.sealedWith(r); encrypted && kid != s.key {
		if raw, err = s.reseal(id, r); err != nil {
			return false, err
		}
		rekeyed = true
	}
	req := &writeReq{id: [32]byte(b), owner: owner, raw: raw, from: &loc, reply: make(chan error, 1)}
	if err := s.enqueue(ctx, req); err != nil {
		return false, err
	}
	return rekeyed, <-req.reply
}

// reseal opens r (chunk id) with the key that sealed it, checks the
// plaintext against the id, and returns a version 2 record of it sealed
// with the current key.
func (s *Store) reseal(id string, r record) ([]byte, error) {
	data, err := s.plaintext(r)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if sha256.Sum256(data) != r.id || hex.EncodeToString(r.id[:]) != id {
		return nil, fmt.Errorf("chunk %s: %w: its bytes do not hash to its id", id, ErrCorrupt)
	}
	ad := sealAD(r.id, s.key)
	payload := seal(s.aead, ad[:], data)
	out := make([]byte, headerSize2+len(payload))
	encodeHeader2(out, r.id, flagEncrypted, s.key, payload)
	copy(out[headerSize2:], payload)
	return out, nil
}

// forgetLegacy makes the current key the one version 1 records are
// taken to be sealed with, once none is left under another.
func (s *Store) forgetLegacy() error {
	if s.legacy.Load() == s.key {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyLegacyKey, binary.BigEndian.AppendUint32(nil, s.key))
	})
	if err != nil {
		return fmt.Errorf("record the legacy key: %w", err)
	}
	s.legacy.Store(s.key)
	return nil
}

// rekeying reports whether records may be sealed with a key other than
// the current one.
func (s *Store) rekeying() bool {
	return s.aead != nil && (len(s.keys) > 1 || s.legacy.Load() != s.key)
}

// headerKey reads the header of the record at loc and returns the id of
// the key that sealed it, and whether it is encrypted at all. The payload
// is not checked: that is for reads and the scrub.
func (s *Store) headerKey(loc Location) (uint32, bool, error) {
	f, err := s.reader(loc.Pack)
	if err != nil {
		return 0, false, err
	}
	var h [9]byte // magic, flags, and a version 2 record's key id
	if _, err := f.ReadAt(h[:], loc.Offset); err != nil {
		return 0, false, err
	}
	switch [4]byte(h[0:4]) {
	case magic:
		return s.legacy.Load(), h[4]&flagEncrypted != 0, nil
	case magic2:
		return binary.BigEndian.Uint32(h[5:9]), h[4]&flagEncrypted != 0, nil
	}
	return 0, false, fmt.Errorf("pack %d at %d: %w: bad magic", loc.Pack, loc.Offset, ErrCorrupt)
}

// closeDeadActive is how big an active pack of mostly deleted records
// must be for compaction to close and compact it: below it, reclaiming
// is not worth a pack file.
const closeDeadActive = 1 << 20

// closeActive has the writer start a new active pack, so the one that
// was active can be compacted.
func (s *Store) closeActive(ctx context.Context) error {
	req := &writeReq{closePack: true, reply: make(chan error, 1)}
	if err := s.enqueue(ctx, req); err != nil {
		return err
	}
	return <-req.reply
}

// KeyRecords counts the live records sealed with one key.
type KeyRecords struct {
	// KeyID is the key's id as records name it (8 hex digits; see
	// KeyIDOf).
	KeyID   string `json:"key_id"`
	Records int    `json:"records"`
	// Current: the key new records are sealed with. InRing: the store was
	// given the key (current or previous); a record of a key not in the
	// ring cannot be read.
	Current bool `json:"current"`
	InRing  bool `json:"in_ring"`
}

// KeyUsage counts the live encrypted records by the key that sealed them
// (reading each record's header), current key first, so the operator sees
// when a previous key is no longer needed. A plain store has none.
func (s *Store) KeyUsage(ctx context.Context) ([]KeyRecords, error) {
	if s.aead == nil {
		return []KeyRecords{}, nil
	}
	var locs []Location
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(_, v []byte) error {
			locs = append(locs, decodeLocation(v))
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	counts := map[uint32]int{s.key: 0}
	for _, loc := range locs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		kid, encrypted, err := s.headerKey(loc)
		if err != nil || !encrypted {
			continue // moved or deleted since the listing, or damaged
		}
		counts[kid]++
	}
	out := make([]KeyRecords, 0, len(counts))
	for kid, n := range counts {
		_, in := s.keys[kid]
		out = append(out, KeyRecords{KeyID: KeyIDString(kid), Records: n, Current: kid == s.key, InRing: in})
	}
	slices.SortFunc(out, func(a, b KeyRecords) int {
		if a.Current != b.Current {
			if a.Current {
				return -1
			}
			return 1
		}
		return strings.Compare(a.KeyID, b.KeyID)
	})
	return out, nil
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
	if err := s.reclaimed(n); err != nil {
		return false, fmt.Errorf("give owners back pack %d's deleted records: %w", n, err)
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
	return true, atomicfile.SyncDir(s.packDir())
}
