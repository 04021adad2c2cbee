package anchoring

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/chain"
)

// The durable queue: an anchor is on disk (bbolt commit, fsynced) before
// the client hears 202, and stays pending until the follower sees the block
// that seals it, or the engine refuses it.
var (
	bucketAnchors = []byte("anchors") // owner ‖ 0 ‖ session id → record JSON
	bucketPending = []byte("pending") // tx id → its key in anchors
	// bucketQueue orders the pending anchors as they were accepted:
	// place(8) → tx id. The engine is offered the oldest first, so an
	// anchor accepted early is never passed over for newer ones while
	// the engine defers some (its mempool full).
	bucketQueue = []byte("queue")
	bucketMeta  = []byte("meta")
	// bucketDaily counts each owner's new anchors of a day: day(4, days
	// since 1970-01-01 UTC) ‖ owner → count(8). Days before today are
	// dropped as they pass.
	bucketDaily = []byte("daily")
	keyFollowed = []byte("followed") // height of the last block seen
	keySchema   = []byte("schema")   // layout version, see migrate
)

// schema is the layout this code writes: 3 orders the pending anchors in
// bucketQueue; 2 keys anchors by owner and session; 1 (no key) keyed them
// by session alone.
const schema = "3"

// record is one anchor's state.
type record struct {
	// Owner is the principal the anchor was accepted for.
	Owner     string          `json:"owner"`
	SessionID string          `json:"session_id"`
	TxID      string          `json:"tx_id"`
	Tx        json.RawMessage `json:"tx"`
	Status    status          `json:"status"`
	// Queued is the anchor's place in bucketQueue while it is pending.
	Queued uint64 `json:"queued,omitempty"`
	Height uint64 `json:"height,omitempty"`
	Index  uint64 `json:"index,omitempty"`
	// Code and Reason say why the engine refused the anchor.
	Code      string    `json:"code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	SealedAt  time.Time `json:"sealed_at,omitzero"`
}

// status is where an anchor is: pending until sealed or refused, both of
// which are final.
type status string

const (
	statusPending status = "pending"
	statusSealed  status = "sealed"
	statusRefused status = "refused"
)

// anchorKey is a record's key: sessions are per owner.
func anchorKey(owner, sessionID string) []byte { return []byte(owner + "\x00" + sessionID) }

var errConflict = errors.New("session already anchored with a different manifest")

type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open anchor queue %s: %w", path, err)
	}
	// Group commit: concurrent accepts share one fsync.
	db.MaxBatchDelay = 2 * time.Millisecond
	db.MaxBatchSize = 2000
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketAnchors, bucketPending, bucketQueue, bucketMeta, bucketDaily} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return migrate(tx)
	})
	if err != nil {
		_ = db.Close() // the open error is the one to report
		return nil, fmt.Errorf("open anchor queue %s: %w", path, err)
	}
	return &store{db: db}, nil
}

// migrate brings a queue of an earlier schema to this one, in one
// transaction: all or none.
func migrate(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	switch string(meta.Get(keySchema)) {
	case schema:
		return nil
	case "", "1":
		if err := keyByOwner(tx); err != nil {
			return err
		}
	}
	if err := orderPending(tx); err != nil {
		return fmt.Errorf("migrate the anchor queue: %w", err)
	}
	return meta.Put(keySchema, []byte(schema))
}

// keyByOwner moves a queue of schema 1 (records keyed by session alone)
// to schema 2: each record under its owner (the one its transaction
// names; the gateway set it then too, or the client did) and session, and
// the pending index pointing at the new keys.
func keyByOwner(tx *bolt.Tx) error {
	anchors, pending := tx.Bucket(bucketAnchors), tx.Bucket(bucketPending)
	type moved struct{ old, new, value []byte }
	var moves []moved
	err := anchors.ForEach(func(k, v []byte) error {
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("anchor %s: %w", k, err)
		}
		t, err := chain.ParseTransaction(rec.Tx)
		if err != nil {
			return fmt.Errorf("anchor %s: its transaction does not parse: %w", k, err)
		}
		if t.Anchor == nil {
			return fmt.Errorf("anchor %s: its transaction is not a session anchor", k)
		}
		rec.Owner = t.Anchor.Owner
		enc, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		moves = append(moves, moved{append([]byte(nil), k...), anchorKey(rec.Owner, rec.SessionID), enc})
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate the anchor queue: %w", err)
	}
	keyOf := map[string][]byte{}
	for _, m := range moves {
		if err := anchors.Delete(m.old); err != nil {
			return err
		}
		keyOf[string(m.old)] = m.new
	}
	for _, m := range moves {
		if err := anchors.Put(m.new, m.value); err != nil {
			return err
		}
	}
	var repoint [][2][]byte
	err = pending.ForEach(func(k, v []byte) error {
		if nk, ok := keyOf[string(v)]; ok {
			repoint = append(repoint, [2][]byte{append([]byte(nil), k...), nk})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, kv := range repoint {
		if err := pending.Put(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// orderPending builds bucketQueue again from the pending index, oldest
// accepted first. It runs on any queue not written at schema 3, which
// includes one written by an earlier release after a rollback: that
// release neither queued what it accepted nor took out of the queue what
// it sealed.
func orderPending(tx *bolt.Tx) error {
	if tx.Bucket(bucketQueue) != nil {
		if err := tx.DeleteBucket(bucketQueue); err != nil { // its places, and its sequence
			return err
		}
	}
	queue, err := tx.CreateBucket(bucketQueue)
	if err != nil {
		return err
	}
	anchors := tx.Bucket(bucketAnchors)
	type waiting struct {
		key []byte
		rec record
	}
	var all []waiting
	err = tx.Bucket(bucketPending).ForEach(func(_, key []byte) error {
		w := waiting{key: bytes.Clone(key)}
		if err := json.Unmarshal(anchors.Get(key), &w.rec); err != nil {
			return fmt.Errorf("anchor %s: %w", key, err)
		}
		all = append(all, w)
		return nil
	})
	if err != nil {
		return err
	}
	slices.SortStableFunc(all, func(a, b waiting) int { return a.rec.CreatedAt.Compare(b.rec.CreatedAt) })
	for _, w := range all {
		if w.rec.Queued, err = queue.NextSequence(); err != nil {
			return err
		}
		enc, err := json.Marshal(&w.rec)
		if err != nil {
			return err
		}
		if err := anchors.Put(w.key, enc); err != nil {
			return err
		}
		if err := queue.Put(place(w.rec.Queued), []byte(w.rec.TxID)); err != nil {
			return err
		}
	}
	return nil
}

// place is a queue key.
func place(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func (s *store) close() error { return s.db.Close() }

// dailyLimitError refuses a new anchor beyond its owner's anchors of a
// day.
type dailyLimitError struct{ limit uint64 }

func (e *dailyLimitError) Error() string {
	return fmt.Sprintf("%d new anchors today already, as many as a day allows", e.limit)
}

// dayOf numbers t's UTC day.
func dayOf(t time.Time) uint32 { return uint32(t.Unix() / 86400) }

// accept queues rec unless its owner's session is already anchored: the
// same transaction again is the same anchor (created=false); another is a
// conflict. A new anchor is refused with a *dailyLimitError once its owner
// has perDay new ones on rec's day (0: no bound); the same anchor again
// counts nothing.
func (s *store) accept(rec *record, perDay uint64) (existing *record, created bool, err error) {
	key := anchorKey(rec.Owner, rec.SessionID)
	day := dayOf(rec.CreatedAt)
	if perDay > 0 {
		// A refusal found inside the batch would roll back every other
		// accept in it, to run them again: an owner at its bound is told
		// so before (the batch checks again, for one that gets there at
		// the same moment).
		var over bool
		_ = s.db.View(func(tx *bolt.Tx) error {
			if v := tx.Bucket(bucketAnchors).Get(key); v != nil {
				return nil // the batch tells the same anchor from a conflict
			}
			k := append(binary.BigEndian.AppendUint32(nil, day), rec.Owner...)
			v := tx.Bucket(bucketDaily).Get(k)
			over = len(v) == 8 && binary.BigEndian.Uint64(v) >= perDay
			return nil
		})
		if over {
			return nil, false, &dailyLimitError{limit: perDay}
		}
	}
	err = s.db.Batch(func(tx *bolt.Tx) error {
		existing, created = nil, false
		anchors := tx.Bucket(bucketAnchors)
		if v := anchors.Get(key); v != nil {
			var old record
			if err := json.Unmarshal(v, &old); err != nil {
				return err
			}
			switch {
			case old.TxID == rec.TxID:
				existing = &old
				return nil
			case old.Status != statusRefused:
				existing = &old
				return errConflict
			}
			// The engine refused the earlier manifest, so the session
			// is not anchored: another may take its place (a seal
			// again with corrected times), or it would be stuck.
		}
		if err := countToday(tx.Bucket(bucketDaily), day, rec.Owner, perDay); err != nil {
			return err
		}
		queue := tx.Bucket(bucketQueue)
		var err error
		if rec.Queued, err = queue.NextSequence(); err != nil {
			return err
		}
		enc, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := anchors.Put(key, enc); err != nil {
			return err
		}
		if err := queue.Put(place(rec.Queued), []byte(rec.TxID)); err != nil {
			return err
		}
		created = true
		return tx.Bucket(bucketPending).Put([]byte(rec.TxID), key)
	})
	return existing, created, err
}

// countToday counts one more new anchor of owner's on day, refusing it
// past perDay (0: counted, not bounded), and drops the days before.
func countToday(b *bolt.Bucket, day uint32, owner string, perDay uint64) error {
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); len(k) >= 4 && binary.BigEndian.Uint32(k) < day; k, _ = c.Next() {
		old = append(old, bytes.Clone(k))
	}
	for _, k := range old { // deleting under a cursor can skip keys
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	k := append(binary.BigEndian.AppendUint32(nil, day), owner...)
	var n uint64
	if v := b.Get(k); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	if perDay > 0 && n >= perDay {
		return &dailyLimitError{limit: perDay}
	}
	return b.Put(k, binary.BigEndian.AppendUint64(nil, n+1))
}

// get returns owner's anchor of a session, nil if there is none.
func (s *store) get(owner, sessionID string) (*record, error) {
	var rec *record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAnchors).Get(anchorKey(owner, sessionID))
		if v == nil {
			return nil
		}
		rec = new(record)
		return json.Unmarshal(v, rec)
	})
	return rec, err
}

// pending returns up to n pending transactions (id → canonical tx) in
// the order they were accepted, from the place after after on, and the
// place of the last one looked at: a caller going through the queue in
// batches starts the next one there.
func (s *store) pending(n int, after uint64, skip func(id string) bool) (ids []string, txs [][]byte, last uint64, err error) {
	last = after
	err = s.db.View(func(tx *bolt.Tx) error {
		anchors, pending := tx.Bucket(bucketAnchors), tx.Bucket(bucketPending)
		c := tx.Bucket(bucketQueue).Cursor()
		for k, id := c.Seek(place(after + 1)); k != nil && len(ids) < n; k, id = c.Next() {
			last = binary.BigEndian.Uint64(k)
			key := pending.Get(id)
			if key == nil || skip(string(id)) {
				continue
			}
			var rec record
			if err := json.Unmarshal(anchors.Get(key), &rec); err != nil {
				return err
			}
			ids = append(ids, string(id))
			txs = append(txs, rec.Tx)
		}
		return nil
	})
	return ids, txs, last, err
}

// oldestPending is when the anchor first in the queue was accepted; zero
// when none is pending.
func (s *store) oldestPending() time.Time {
	var oldest time.Time
	_ = s.db.View(func(tx *bolt.Tx) error {
		anchors, pending := tx.Bucket(bucketAnchors), tx.Bucket(bucketPending)
		c := tx.Bucket(bucketQueue).Cursor()
		for _, id := c.First(); id != nil; _, id = c.Next() {
			if key := pending.Get(id); key != nil {
				var rec struct {
					CreatedAt time.Time `json:"created_at"`
				}
				if json.Unmarshal(anchors.Get(key), &rec) == nil {
					oldest = rec.CreatedAt
				}
				return nil
			}
		}
		return nil
	})
	return oldest
}

func (s *store) pendingCount() int {
	n := 0
	_ = s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketPending).Stats().KeyN
		return nil
	})
	return n
}

// sealed marks the anchors a block sealed and records the block as seen,
// in one transaction.
type sealedTx struct {
	id     string
	height uint64
	index  uint64
}

func (s *store) markSealed(height uint64, txs []sealedTx) (int, error) {
	return s.mark(txs, &height, nil)
}

// markSealedOnly marks anchors sealed without moving the follower.
func (s *store) markSealedOnly(txs []sealedTx) (int, error) { return s.mark(txs, nil, nil) }

// refusal is the engine's final no to one pending anchor.
type refusal struct {
	id           string
	code, reason string
}

// markRefused records the engine's refusals: those anchors leave the
// queue with their reason, so one bad anchor never holds back the rest.
func (s *store) markRefused(refused []refusal) (int, error) { return s.mark(nil, nil, refused) }

// mark moves pending anchors to sealed or refused and, with followed,
// records the block the follower has seen, in one transaction.
func (s *store) mark(txs []sealedTx, followed *uint64, refused []refusal) (int, error) {
	marked := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		pending, anchors, queue := tx.Bucket(bucketPending), tx.Bucket(bucketAnchors), tx.Bucket(bucketQueue)
		update := func(id string, change func(*record)) error {
			key := pending.Get([]byte(id))
			if key == nil {
				return nil
			}
			var rec record
			if err := json.Unmarshal(anchors.Get(key), &rec); err != nil {
				return err
			}
			change(&rec)
			if rec.Queued != 0 && string(queue.Get(place(rec.Queued))) == id {
				if err := queue.Delete(place(rec.Queued)); err != nil {
					return err
				}
			}
			rec.Queued = 0
			enc, err := json.Marshal(&rec)
			if err != nil {
				return err
			}
			if err := anchors.Put(key, enc); err != nil {
				return err
			}
			marked++
			return pending.Delete([]byte(id))
		}
		for _, st := range txs {
			err := update(st.id, func(rec *record) {
				rec.Status, rec.Height, rec.Index, rec.SealedAt = statusSealed, st.height, st.index, time.Now().UTC()
			})
			if err != nil {
				return err
			}
		}
		for _, r := range refused {
			if err := update(r.id, func(rec *record) { rec.Status, rec.Code, rec.Reason = statusRefused, r.code, r.reason }); err != nil {
				return err
			}
		}
		if followed == nil {
			return nil
		}
		return tx.Bucket(bucketMeta).Put(keyFollowed, binary.BigEndian.AppendUint64(nil, *followed))
	})
	return marked, err
}

func (s *store) followed() uint64 {
	var h uint64
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyFollowed); len(v) == 8 {
			h = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return h
}
