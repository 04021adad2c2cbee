package anchoring

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// The anchoring copy is the queue as one transaction saw it, counted.
func TestSnapshotOfTheQueue(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	for _, id := range []string{"t1", "t2", "t3"} {
		rec := &record{Owner: "alice", SessionID: "s-" + id, TxID: id, Tx: []byte(`{"type":"session_anchor"}`), Status: statusPending, CreatedAt: time.Now()}
		if _, _, err := s.accept(rec, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.markSealed(7, []sealedTx{{id: "t1", height: 7, index: 3}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cp, err := (&App{store: s}).takeSnapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if f := cp.Facts.Anchoring; f == nil || f.Anchors != 3 || f.Pending != 2 || f.Sealed != 1 {
		t.Fatalf("facts = %+v", cp.Facts.Anchoring)
	}
	c, err := openStore(filepath.Join(dir, "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, c)
	if rec, err := c.get("alice", "s-t1"); err != nil || rec == nil || rec.Status != statusSealed || c.followed() != 7 {
		t.Fatalf("the copy: %+v %v, followed %d", rec, err, c.followed())
	}
}
