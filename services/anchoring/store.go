package anchoring

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The durable queue: an anchor is on disk (bbolt commit, fsynced) before
// the client hears 202, and stays pending until the follower sees the block
// that seals it.
var (
	bucketAnchors = []byte("anchors") // session id → record JSON
	bucketPending = []byte("pending") // tx id → session id
	bucketMeta    = []byte("meta")
	keyFollowed   = []byte("followed") // height of the last block seen
)

// record is one anchor's state.
type record struct {
	SessionID string          `json:"session_id"`
	TxID      string          `json:"tx_id"`
	Tx        json.RawMessage `json:"tx"`
	Status    string          `json:"status"`
	Height    uint64          `json:"height,omitempty"`
	Index     uint64          `json:"index,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	SealedAt  time.Time       `json:"sealed_at,omitzero"`
}

const (
	statusPending = "pending"
	statusSealed  = "sealed"
)

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
		for _, b := range [][]byte{bucketAnchors, bucketPending, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// accept queues rec unless its session is already anchored: the same
// transaction again is the same anchor (created=false); another is a
// conflict.
func (s *store) accept(rec *record) (existing *record, created bool, err error) {
	err = s.db.Batch(func(tx *bolt.Tx) error {
		existing, created = nil, false
		anchors := tx.Bucket(bucketAnchors)
		if v := anchors.Get([]byte(rec.SessionID)); v != nil {
			var old record
			if err := json.Unmarshal(v, &old); err != nil {
				return err
			}
			if old.TxID != rec.TxID {
				existing = &old
				return errConflict
			}
			existing = &old
			return nil
		}
		enc, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		if err := anchors.Put([]byte(rec.SessionID), enc); err != nil {
			return err
		}
		created = true
		return tx.Bucket(bucketPending).Put([]byte(rec.TxID), []byte(rec.SessionID))
	})
	return existing, created, err
}

func (s *store) get(sessionID string) (*record, error) {
	var rec *record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAnchors).Get([]byte(sessionID))
		if v == nil {
			return nil
		}
		rec = new(record)
		return json.Unmarshal(v, rec)
	})
	return rec, err
}

// pending returns up to n pending transactions (id → canonical tx).
func (s *store) pending(n int, skip func(id string) bool) (ids []string, txs [][]byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		anchors := tx.Bucket(bucketAnchors)
		c := tx.Bucket(bucketPending).Cursor()
		for k, v := c.First(); k != nil && len(ids) < n; k, v = c.Next() {
			if skip(string(k)) {
				continue
			}
			var rec record
			if err := json.Unmarshal(anchors.Get(v), &rec); err != nil {
				return err
			}
			ids = append(ids, string(k))
			txs = append(txs, rec.Tx)
		}
		return nil
	})
	return ids, txs, err
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
	return s.mark(txs, &height)
}

// markSealedOnly marks anchors sealed without moving the follower.
func (s *store) markSealedOnly(txs []sealedTx) (int, error) { return s.mark(txs, nil) }

func (s *store) mark(txs []sealedTx, followed *uint64) (int, error) {
	marked := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		pending, anchors := tx.Bucket(bucketPending), tx.Bucket(bucketAnchors)
		for _, st := range txs {
			sid := pending.Get([]byte(st.id))
			if sid == nil {
				continue
			}
			var rec record
			if err := json.Unmarshal(anchors.Get(sid), &rec); err != nil {
				return err
			}
			rec.Status, rec.Height, rec.Index, rec.SealedAt = statusSealed, st.height, st.index, time.Now().UTC()
			enc, err := json.Marshal(&rec)
			if err != nil {
				return err
			}
			if err := anchors.Put(sid, enc); err != nil {
				return err
			}
			if err := pending.Delete([]byte(st.id)); err != nil {
				return err
			}
			marked++
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
