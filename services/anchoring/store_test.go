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
	ids, _, err := s.pending(10, func(string) bool { return false })
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
	ids, _, _ := s.pending(10, func(string) bool { return false })
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
	ids, _, _ = s.pending(10, func(string) bool { return false })
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
	ids, txs, err := s.pending(10, func(string) bool { return false })
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
