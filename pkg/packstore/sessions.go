package packstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Session is what the store keeps about a recording session.
type Session struct {
	ID string `json:"id"`
	// Owner is the principal the session belongs to ("" for sessions
	// stored before owners existed).
	Owner    string    `json:"owner,omitempty"`
	Chunks   uint64    `json:"chunks"`
	Sealed   bool      `json:"sealed"`
	SealedAt time.Time `json:"sealed_at,omitzero"`
	// Anchor is what the caller recorded when sealing (the anchor's id).
	Anchor string `json:"anchor,omitempty"`
	// Version changes whenever the session's chunks change, so a caller
	// can cache what it derives from them (its Merkle tree).
	Version uint64 `json:"version"`
}

// Session returns owner's session id without listing its chunks.
func (s *Store) Session(owner, id string) (*Session, error) {
	var sess *Session
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		sess, err = getSession(tx, owner, id)
		return err
	})
	if err == nil && sess == nil {
		err = fmt.Errorf("session %s: %w", id, ErrNotFound)
	}
	return sess, err
}

// HasMember reports whether index m.Index of owner's session m.Session
// holds chunk id already: adding it there again (a retried push) writes
// nothing.
func (s *Store) HasMember(owner, id string, m Member) bool {
	held := false
	_ = s.db.View(func(tx *bolt.Tx) error { // an error reads as not held
		held = string(tx.Bucket(bucketMembers).Get(memberKey(owner, m.Session, m.Index))) == id
		return nil
	})
	return held
}

// memberPrefix is where the members of a session start; each is followed
// by its index (8 bytes).
func memberPrefix(owner, session string) []byte {
	return []byte(scoped(owner, session) + "\x00")
}

func memberKey(owner, session string, index uint64) []byte {
	return binary.BigEndian.AppendUint64(memberPrefix(owner, session), index)
}

func getSession(tx *bolt.Tx, owner, id string) (*Session, error) {
	v := tx.Bucket(bucketSessions).Get([]byte(scoped(owner, id)))
	if v == nil {
		return nil, nil
	}
	var s Session
	return &s, json.Unmarshal(v, &s)
}

func putSession(tx *bolt.Tx, s *Session) error {
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketSessions).Put([]byte(scoped(s.Owner, s.ID)), v)
}

// refKey records that owner's session holds owner's chunk id.
func refKey(owner, id, session string) []byte {
	return []byte(scoped(owner, id) + "\x00" + session)
}

// addMember records owner's chunk id at m.Index of owner's session
// m.Session, which may hold at most limit chunks (0: no bound). The same
// chunk at the same index again is a no-op.
func addMember(tx *bolt.Tx, owner, id string, m Member, limit uint64) error {
	sess, err := getSession(tx, owner, m.Session)
	if err != nil {
		return err
	}
	if sess == nil {
		sess = &Session{ID: m.Session, Owner: owner}
	}
	members := tx.Bucket(bucketMembers)
	key := memberKey(owner, m.Session, m.Index)
	if have := members.Get(key); have != nil {
		if string(have) == id {
			return nil // already there: a retried upload, sealed or not
		}
		return fmt.Errorf("%w: index %d of session %s holds %s", ErrIndexTaken, m.Index, m.Session, have)
	}
	if sess.Sealed {
		return fmt.Errorf("%w: %s", ErrSealed, m.Session)
	}
	if limit > 0 && sess.Chunks >= limit {
		return fmt.Errorf("%w: session %s holds %d", ErrSessionFull, m.Session, sess.Chunks)
	}
	if err := members.Put(key, []byte(id)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketRefs).Put(refKey(owner, id, m.Session), nil); err != nil {
		return err
	}
	sess.Chunks++
	sess.Version++
	return putSession(tx, sess)
}

// SessionChunks returns owner's session id and its chunk ids in index
// order.
func (s *Store) SessionChunks(owner, id string) (*Session, []string, error) {
	var sess *Session
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if sess, err = getSession(tx, owner, id); err != nil || sess == nil {
			return err
		}
		c := tx.Bucket(bucketMembers).Cursor()
		prefix := memberPrefix(owner, id)
		for k, v := c.Seek(prefix); k != nil && len(k) == len(prefix)+8 && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
			ids = append(ids, string(v))
		}
		return nil
	})
	if err == nil && sess == nil {
		err = fmt.Errorf("session %s: %w", id, ErrNotFound)
	}
	return sess, ids, err
}

// SetAnchor records the anchor transaction of owner's sealed session id.
func (s *Store) SetAnchor(owner, id, anchor string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		sess, err := getSession(tx, owner, id)
		if err != nil || sess == nil {
			return err
		}
		sess.Anchor = anchor
		return putSession(tx, sess)
	})
}

// Seal freezes owner's session id: no chunk is added to it after. anchor
// is kept with it. Sealing again returns the session as it is.
func (s *Store) Seal(owner, id, anchor string) (*Session, error) {
	var sess *Session
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if sess, err = getSession(tx, owner, id); err != nil {
			return err
		}
		if sess == nil {
			return fmt.Errorf("session %s: %w", id, ErrNotFound)
		}
		if sess.Sealed {
			return nil
		}
		sess.Sealed, sess.SealedAt, sess.Anchor = true, time.Now().UTC(), anchor
		return putSession(tx, sess)
	})
	return sess, err
}

// Delete removes owner's chunk id, unless one of owner's sealed sessions
// references it; it leaves owner's sessions that are still open. Its bytes
// stay in the pack (counted as dead) until the pack is compacted.
func (s *Store) Delete(owner, id string) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error {
		chunks := tx.Bucket(bucketChunks)
		key := []byte(scoped(owner, id))
		v := chunks.Get(key)
		if v == nil {
			return ErrNotFound
		}
		refs := tx.Bucket(bucketRefs)
		prefix := []byte(scoped(owner, id) + "\x00")
		var sessions []string
		c := refs.Cursor()
		for k, _ := c.Seek(prefix); k != nil && string(k[:min(len(k), len(prefix))]) == string(prefix); k, _ = c.Next() {
			sessions = append(sessions, string(k[len(prefix):]))
		}
		for _, sid := range sessions {
			sess, err := getSession(tx, owner, sid)
			if err != nil {
				return err
			}
			if sess != nil && sess.Sealed {
				return fmt.Errorf("%w %s", ErrReferenced, sid)
			}
		}
		// Open sessions let go of the chunk.
		members := tx.Bucket(bucketMembers)
		for _, sid := range sessions {
			// Collect first: deleting under a bbolt cursor can skip keys.
			var keys [][]byte
			mc := members.Cursor()
			sp := memberPrefix(owner, sid)
			for k, mv := mc.Seek(sp); k != nil && len(k) == len(sp)+8 && string(k[:len(sp)]) == string(sp); k, mv = mc.Next() {
				if string(mv) == id {
					keys = append(keys, append([]byte(nil), k...))
				}
			}
			for _, k := range keys {
				if err := members.Delete(k); err != nil {
					return err
				}
			}
			if sess, err := getSession(tx, owner, sid); err == nil && sess != nil {
				sess.Chunks -= uint64(len(keys))
				sess.Version++
				if err := putSession(tx, sess); err != nil {
					return err
				}
			}
			if err := refs.Delete(refKey(owner, id, sid)); err != nil {
				return err
			}
		}
		loc := decodeLocation(v)
		meta := tx.Bucket(bucketMeta)
		dead := uint64(loc.Length)
		if d := meta.Get(keyDeadBytes); len(d) == 8 {
			dead += binary.BigEndian.Uint64(d)
		}
		if err := meta.Put(keyDeadBytes, binary.BigEndian.AppendUint64(nil, dead)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDamaged).Delete(key); err != nil {
			return err
		}
		if err := changeUsage(tx, owner, -int64(loc.Length), -1, 0); err != nil {
			return err
		}
		if err := markDead(tx, owner, loc); err != nil {
			return err
		}
		return chunks.Delete(key)
	})
}

// Damage is one chunk a scrub found unreadable.
type Damage struct {
	ID string `json:"id"`
	// Owner holds the chunk and Sessions are the owner's sessions that
	// reference it: a scrub is the operator's, who sees every owner.
	Owner    string   `json:"owner,omitempty"`
	Sessions []string `json:"sessions"`
	Error    string   `json:"error"`
}

// ScrubReport is what a scrub found.
type ScrubReport struct {
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Chunks     int       `json:"chunks"`
	Bytes      int64     `json:"bytes"`
	Damaged    []Damage  `json:"damaged"`
}

// Scrub re-reads every chunk, checking its record and hash, and reports
// the damaged ones with the sessions that hold them. It reads outside any
// index transaction, so writes go on meanwhile.
func (s *Store) Scrub(ctx context.Context) (*ScrubReport, error) {
	rep := &ScrubReport{StartedAt: time.Now().UTC(), Damaged: []Damage{}}
	type entry struct {
		owner, id string
		loc       Location
	}
	var all []entry
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			owner, id := unscoped(string(k))
			all = append(all, entry{owner, id, decodeLocation(v)})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	for _, e := range all {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		data, err := s.read(e.id, e.loc)
		if err != nil {
			// Deleted or moved (compaction) since the listing: check
			// where it is now before calling it damaged.
			now, lerr := s.Locate(e.owner, e.id)
			if lerr != nil {
				continue
			}
			if now != e.loc {
				if data, err = s.read(e.id, now); err == nil {
					rep.Chunks++
					rep.Bytes += int64(len(data))
					continue
				}
			}
			rep.Damaged = append(rep.Damaged, Damage{ID: e.id, Owner: e.owner, Sessions: s.sessionsOf(e.owner, e.id), Error: err.Error()})
			if err := s.markDamaged(e.owner, e.id, now); err != nil {
				return nil, err
			}
			continue
		}
		rep.Chunks++
		rep.Bytes += int64(len(data))
	}
	rep.FinishedAt = time.Now().UTC()
	return rep, nil
}

func (s *Store) sessionsOf(owner, id string) []string {
	out := []string{}
	_ = s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(scoped(owner, id) + "\x00")
		c := tx.Bucket(bucketRefs).Cursor()
		for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Next() {
			out = append(out, string(k[len(prefix):]))
		}
		return nil
	})
	return out
}

// Stats are the store's counts.
type Stats struct {
	Chunks    int   `json:"chunks"`
	Sessions  int   `json:"sessions"`
	Packs     int   `json:"packs"`
	PackBytes int64 `json:"pack_bytes"`
	DeadBytes int64 `json:"dead_bytes"`
	Encrypted bool  `json:"encrypted"`
}

// Stats counts chunks, sessions, packs and bytes.
func (s *Store) Stats() (Stats, error) {
	st := Stats{Encrypted: s.aead != nil}
	err := s.db.View(func(tx *bolt.Tx) error {
		st.Chunks = tx.Bucket(bucketChunks).Stats().KeyN
		st.Sessions = tx.Bucket(bucketSessions).Stats().KeyN
		if d := tx.Bucket(bucketMeta).Get(keyDeadBytes); len(d) == 8 {
			st.DeadBytes = int64(binary.BigEndian.Uint64(d))
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	entries, err := os.ReadDir(s.packDir())
	if err != nil {
		return st, err
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && !e.IsDir() {
			st.Packs++
			st.PackBytes += fi.Size()
		}
	}
	return st, nil
}

func (s *Store) packDir() string { return filepath.Join(s.opts.Dir, "packs") }
