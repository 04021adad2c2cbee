package anchoring

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

// TestQueueSurvivesReopen: what accept returned is on disk, pending, after
// the queue is closed and opened again; sealing it is recorded durably.
func TestQueueSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "anchors.db")
	s, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if !s.oldestPending().IsZero() {
		t.Error("an empty queue has an oldest anchor")
	}
	rec := &record{Owner: "alice", SessionID: "s1", TxID: "t1", Tx: []byte(`{"type":"session_anchor"}`), Status: statusPending, CreatedAt: time.Now()}
	if _, created, err := s.accept(rec, 0); err != nil || !created {
		t.Fatalf("accept: %v %v", created, err)
	}
	if got := s.oldestPending(); !got.Equal(rec.CreatedAt) {
		t.Errorf("oldest pending %s, want %s", got, rec.CreatedAt)
	}
	if _, created, err := s.accept(rec, 0); err != nil || created {
		t.Fatalf("same anchor again: created=%v %v", created, err)
	}
	other := *rec
	other.TxID = "t2"
	if _, _, err := s.accept(&other, 0); !errors.Is(err, errConflict) {
		t.Fatalf("conflicting anchor: %v", err)
	}
	// Sessions are per owner: mallory's s1 is hers, and alice's stays.
	mallorys := other
	mallorys.Owner = "mallory"
	if _, created, err := s.accept(&mallorys, 0); err != nil || !created {
		t.Fatalf("another owner's anchor of the same session id: created=%v %v", created, err)
	}
	if got, _ := s.get("mallory", "s1"); got == nil || got.TxID != "t2" {
		t.Fatalf("mallory's s1 = %+v", got)
	}
	if n, err := s.markRefused([]refusal{{id: "t2", code: "LUCID_ERR_1009", reason: "taken"}}); err != nil || n != 1 {
		t.Fatalf("markRefused = %d %v", n, err)
	}
	closeStore(t, s)

	s, err = openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	ids, _, _, err := s.pending(10, 0, func(string) bool { return false })
	if err != nil || len(ids) != 1 || ids[0] != "t1" {
		t.Fatalf("pending after reopen = %v %v", ids, err)
	}
	if n, err := s.markSealed(7, []sealedTx{{id: "t1", height: 7, index: 3}, {id: "unknown", height: 7}}); err != nil || n != 1 {
		t.Fatalf("markSealed = %d %v", n, err)
	}
	got, _ := s.get("alice", "s1")
	if got.Status != statusSealed || got.Height != 7 || got.Index != 3 || s.followed() != 7 || s.pendingCount() != 0 || !s.oldestPending().IsZero() {
		t.Errorf("after sealing: %+v followed %d pending %d", got, s.followed(), s.pendingCount())
	}
}

// TestRefusedLeavesTheQueueWithItsReason: a refused anchor is final, says
// why, and is never offered to the engine again.
func TestRefusedLeavesTheQueueWithItsReason(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	for i, id := range []string{"t1", "t2", "t3"} {
		rec := &record{Owner: "alice", SessionID: fmt.Sprintf("s%d", i), TxID: id, Tx: []byte(`{}`), Status: statusPending}
		if _, _, err := s.accept(rec, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.markRefused([]refusal{{id: "t2", code: "C", reason: "why"}}); err != nil {
		t.Fatal(err)
	}
	ids, _, _, _ := s.pending(10, 0, func(string) bool { return false })
	if len(ids) != 2 || ids[0] != "t1" || ids[1] != "t3" {
		t.Errorf("pending = %v, want t1 t3", ids)
	}
	got, _ := s.get("alice", "s1")
	if got.Status != statusRefused || got.Code != "C" || got.Reason != "why" {
		t.Errorf("refused record = %+v", got)
	}
	// The session is not anchored: another manifest takes the refused
	// one's place and is queued, where a pending one's would conflict.
	again := &record{Owner: "alice", SessionID: "s1", TxID: "t2b", Tx: []byte(`{}`), Status: statusPending}
	if _, created, err := s.accept(again, 0); err != nil || !created {
		t.Fatalf("another manifest for a session whose anchor was refused: created %v, %v", created, err)
	}
	if got, _ := s.get("alice", "s1"); got.TxID != "t2b" || got.Status != statusPending {
		t.Errorf("the record after it: %+v", got)
	}
	ids, _, _, _ = s.pending(10, 0, func(string) bool { return false })
	if !slices.Contains(ids, "t2b") {
		t.Errorf("pending = %v, want t2b among them", ids)
	}
	other := &record{Owner: "alice", SessionID: "s0", TxID: "t1b", Tx: []byte(`{}`), Status: statusPending}
	if _, _, err := s.accept(other, 0); !errors.Is(err, errConflict) {
		t.Errorf("another manifest for a session whose anchor is pending: %v, want a conflict", err)
	}
}

// TestOldQueueIsMigrated: a queue keyed by session alone (schema 1) opens
// with every record under its owner, pending ones still pending.
func TestOldQueueIsMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "anchors.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := chaintest.Anchor(1), chaintest.Anchor(2)
	err = db.Update(func(tx *bolt.Tx) error {
		anchors, _ := tx.CreateBucket(bucketAnchors)
		pending, _ := tx.CreateBucket(bucketPending)
		for i, a := range []*chain.Transaction{a1, a2} {
			raw, _ := a.Encode()
			st := "pending"
			if i == 1 {
				st = "sealed"
			}
			v, _ := json.Marshal(map[string]any{"session_id": a.Anchor.SessionID, "tx_id": chain.TxID(raw), "tx": json.RawMessage(raw), "status": st})
			if err := anchors.Put([]byte(a.Anchor.SessionID), v); err != nil {
				return err
			}
			if i == 0 {
				if err := pending.Put([]byte(chain.TxID(raw)), []byte(a.Anchor.SessionID)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	s, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	for _, a := range []*chain.Transaction{a1, a2} {
		if got, err := s.get(a.Anchor.Owner, a.Anchor.SessionID); err != nil || got == nil || got.Owner != a.Anchor.Owner {
			t.Fatalf("%s after the migration: %+v %v", a.Anchor.SessionID, got, err)
		}
	}
	ids, txs, _, err := s.pending(10, 0, func(string) bool { return false })
	raw, _ := a1.Encode()
	if err != nil || len(ids) != 1 || ids[0] != chain.TxID(raw) || string(txs[0]) != string(raw) {
		t.Fatalf("pending after the migration: %v %v", ids, err)
	}
	n, err := s.markSealed(3, []sealedTx{{id: ids[0], height: 3}})
	if err != nil || n != 1 {
		t.Fatalf("sealing the migrated anchor: %d %v", n, err)
	}
}

// closeStore closes s and reports a failure: a queue that does not close
// cleanly may have lost what the test wrote.
func closeStore(t *testing.T, s *store) {
	t.Helper()
	if err := s.close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// TestNewAnchorsADayAreBounded: an owner's new anchors stop at the day's
// bound; the same anchor again is answered and counts nothing; another
// owner is not affected; the next day starts again, and the days before
// are dropped.
func TestNewAnchorsADayAreBounded(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.close() }()
	day := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	anchor := func(owner string, i int, at time.Time) error {
		rec := &record{Owner: owner, SessionID: fmt.Sprint("s", i), TxID: fmt.Sprint(owner, i), Tx: []byte(`{}`), Status: statusPending, CreatedAt: at}
		_, _, err := s.accept(rec, 3)
		return err
	}
	for i := range 3 {
		if err := anchor("alice", i, day); err != nil {
			t.Fatalf("anchor %d: %v", i, err)
		}
	}
	var daily *dailyLimitError
	if err := anchor("alice", 3, day.Add(time.Hour)); !errors.As(err, &daily) || daily.limit != 3 {
		t.Fatalf("a fourth new anchor the same day: %v", err)
	}
	if err := anchor("alice", 1, day.Add(2*time.Hour)); err != nil {
		t.Errorf("the same anchor again: %v", err)
	}
	if err := anchor("bob", 0, day); err != nil {
		t.Errorf("another owner: %v", err)
	}
	if err := anchor("alice", 3, day.Add(24*time.Hour)); err != nil {
		t.Errorf("the next day: %v", err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDaily).ForEach(func(k, _ []byte) error {
			if string(k[4:]) != "alice" {
				t.Errorf("a count of a day gone is kept: %q", k)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// queueOf accepts an anchor for each tx id, in that order, a second apart.
func queueOf(t *testing.T, s *store, ids ...string) []*record {
	t.Helper()
	start := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	var recs []*record
	for i, id := range ids {
		rec := &record{Owner: "alice", SessionID: "s-" + id, TxID: id, Tx: []byte(`{"tx":"` + id + `"}`), Status: statusPending,
			CreatedAt: start.Add(time.Duration(i) * time.Second)}
		if _, created, err := s.accept(rec, 0); err != nil || !created {
			t.Fatalf("accept %s: %v %v", id, created, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// allPending is every pending tx id, in the order the engine is offered them.
func allPending(t *testing.T, s *store) []string {
	t.Helper()
	ids, _, _, err := s.pending(1000, 0, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestQueueIsFirstInFirstOut: the engine is offered pending anchors in
// the order they were accepted, whatever their ids, batch after batch
// from where the last one ended; an anchor sealed or refused leaves its
// place, and the oldest pending one is the first in the queue.
func TestQueueIsFirstInFirstOut(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	recs := queueOf(t, s, "t9", "t1", "t5", "t3")
	if got := allPending(t, s); !slices.Equal(got, []string{"t9", "t1", "t5", "t3"}) {
		t.Fatalf("pending = %v, want the order of acceptance", got)
	}
	none := func(string) bool { return false }
	ids, txs, last, err := s.pending(2, 0, none)
	if err != nil || !slices.Equal(ids, []string{"t9", "t1"}) || string(txs[1]) != `{"tx":"t1"}` {
		t.Fatalf("first batch = %v %s %v", ids, txs, err)
	}
	if ids, _, _, _ = s.pending(2, last, none); !slices.Equal(ids, []string{"t5", "t3"}) {
		t.Fatalf("second batch = %v, want t5 t3", ids)
	}
	// Ones sent moments ago are passed over, not the batch cut short.
	if ids, _, _, _ = s.pending(2, 0, func(id string) bool { return id == "t1" }); !slices.Equal(ids, []string{"t9", "t5"}) {
		t.Fatalf("batch with t1 skipped = %v, want t9 t5", ids)
	}
	if !s.oldestPending().Equal(recs[0].CreatedAt) {
		t.Errorf("oldest pending %s, want t9's %s", s.oldestPending(), recs[0].CreatedAt)
	}
	if _, err := s.markSealedOnly([]sealedTx{{id: "t9", height: 2}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.markRefused([]refusal{{id: "t5", code: "C", reason: "why"}}); err != nil {
		t.Fatal(err)
	}
	queueOf(t, s, "t0")
	if got := allPending(t, s); !slices.Equal(got, []string{"t1", "t3", "t0"}) {
		t.Fatalf("pending after sealing t9 and refusing t5 = %v, want t1 t3 t0", got)
	}
	if !s.oldestPending().Equal(recs[1].CreatedAt) {
		t.Errorf("oldest pending %s, want t1's %s", s.oldestPending(), recs[1].CreatedAt)
	}
	if n := queueLen(t, s); n != 3 {
		t.Errorf("the queue holds %d places, want 3: sealed and refused anchors leave it", n)
	}
}

// queueLen is how many places s's queue holds.
func queueLen(t *testing.T, s *store) int {
	t.Helper()
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketQueue).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQueueOrderIsRebuiltAfterAnOlderRelease: a queue an earlier release
// wrote (schema 2: no order kept), as after a rollback and a deploy
// again, which sealed anchors without taking them out of the order and
// accepted others without putting them in, opens with every pending
// anchor in the order of its acceptance and nothing else.
func TestQueueOrderIsRebuiltAfterAnOlderRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "anchors.db")
	s, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	queueOf(t, s, "t8", "t2", "t6")
	closeStore(t, s)

	// The earlier release: t8 sealed (its pending entry gone, its place
	// kept), t1 accepted before t4 (no places), schema 2 written.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketPending).Delete([]byte("t8")); err != nil {
			return err
		}
		for i, id := range []string{"t1", "t4"} {
			v, _ := json.Marshal(map[string]any{"owner": "bob", "session_id": "s-" + id, "tx_id": id, "tx": json.RawMessage(`{}`), "status": "pending",
				"created_at": time.Date(2026, 12, 7, 10, 0, i, 0, time.UTC)})
			key := anchorKey("bob", "s-"+id)
			if err := errors.Join(tx.Bucket(bucketAnchors).Put(key, v), tx.Bucket(bucketPending).Put([]byte(id), key)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, []byte("2"))
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}

	s, err = openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	if got := allPending(t, s); !slices.Equal(got, []string{"t2", "t6", "t1", "t4"}) {
		t.Fatalf("pending = %v, want t2 t6 t1 t4", got)
	}
	if n := queueLen(t, s); n != 4 {
		t.Errorf("the queue holds %d places, want 4", n)
	}
	if _, err := s.markSealedOnly([]sealedTx{{id: "t2"}, {id: "t1"}}); err != nil {
		t.Fatal(err)
	}
	if got := allPending(t, s); !slices.Equal(got, []string{"t6", "t4"}) || queueLen(t, s) != 2 {
		t.Fatalf("pending after sealing two = %v (%d places), want t6 t4", got, queueLen(t, s))
	}
}
