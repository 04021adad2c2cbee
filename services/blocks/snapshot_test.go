package blocks

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/chainstore"
)

// The block manager's copy is its index at one height, which opens as a
// chain store at that height.
func TestSnapshotOfTheIndex(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	c.Append(chaintest.Anchor(2))
	eng := newFakeEngine(t, c)
	app, _ := startApp(t, eng.URL, map[string]string{})
	testenv.Eventually(t, 10*time.Second, "indexed", func() bool { return app.store.Height() == 2 })
	dir := t.TempDir()
	cp, err := app.takeSnapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Facts.Blocks == nil || cp.Facts.Blocks.IndexedHeight != 2 {
		t.Fatalf("facts = %+v", cp.Facts)
	}
	s, err := chainstore.Open(filepath.Join(dir, "index.db"), chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if s.Height() != 2 {
		t.Fatalf("the copy opens at height %d", s.Height())
	}
}
