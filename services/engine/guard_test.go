package engine

import (
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/pkg/chain/chaintest"
)

// TestGuardKeepsTheFirstSignedBlock: once a block is recorded at a height,
// recording another there returns the first, also after a reopen, so the
// node re-proposes it instead of signing a second block at that height.
func TestGuardKeepsTheFirstSignedBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "guard.db")
	g, err := openGuard(path)
	if err != nil {
		t.Fatal(err)
	}
	a, b := chaintest.New(), chaintest.New()
	a.Append(chaintest.Anchor(1))
	b.Append(chaintest.Anchor(2))
	first, err := g.record(a.Blocks[0])
	if err != nil || first.Hash != a.Blocks[0].Hash {
		t.Fatalf("record: %v", err)
	}
	closeGuard(t, g)

	g, err = openGuard(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeGuard(t, g)
	got, err := g.record(b.Blocks[0])
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash != a.Blocks[0].Hash {
		t.Fatalf("a second block was accepted at height 1")
	}
	if s, _ := g.signed(1); s == nil || s.Hash != a.Blocks[0].Hash {
		t.Error("signed(1) lost the first block")
	}
	if err := g.forget(2); err != nil {
		t.Fatal(err)
	}
	if s, _ := g.signed(1); s != nil {
		t.Error("forget kept height 1")
	}
}

// closeGuard closes g and reports a failure: the guard's database was
// written.
func closeGuard(t *testing.T, g *guard) {
	t.Helper()
	if err := g.close(); err != nil {
		t.Errorf("close: %v", err)
	}
}
