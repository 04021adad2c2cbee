package anchoring

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestQueueSurvivesReopen: what accept returned is on disk, pending, after
// the queue is closed and opened again; sealing it is recorded durably.
func TestQueueSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "anchors.db")
	s, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := &record{SessionID: "s1", TxID: "t1", Tx: []byte(`{"type":"session_anchor"}`), Status: statusPending, CreatedAt: time.Now()}
	if _, created, err := s.accept(rec); err != nil || !created {
		t.Fatalf("accept: %v %v", created, err)
	}
	if _, created, err := s.accept(rec); err != nil || created {
		t.Fatalf("same anchor again: created=%v %v", created, err)
	}
	other := *rec
	other.TxID = "t2"
	if _, _, err := s.accept(&other); !errors.Is(err, errConflict) {
		t.Fatalf("conflicting anchor: %v", err)
	}
	s.close()

	s, err = openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	ids, _, err := s.pending(10, func(string) bool { return false })
	if err != nil || len(ids) != 1 || ids[0] != "t1" {
		t.Fatalf("pending after reopen = %v %v", ids, err)
	}
	if n, err := s.markSealed(7, []sealedTx{{id: "t1", height: 7, index: 3}, {id: "unknown", height: 7}}); err != nil || n != 1 {
		t.Fatalf("markSealed = %d %v", n, err)
	}
	got, _ := s.get("s1")
	if got.Status != statusSealed || got.Height != 7 || got.Index != 3 || s.followed() != 7 || s.pendingCount() != 0 {
		t.Errorf("after sealing: %+v followed %d pending %d", got, s.followed(), s.pendingCount())
	}
}
