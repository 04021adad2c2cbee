package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// fetchSnapshot writes every file of copy m, read through the snapshot
// endpoints and checked against the manifest, into a new directory, as a
// restore would.
func fetchSnapshot(t *testing.T, c *snapshotapi.Client, m *snapshotapi.Manifest) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "restored")
	for _, f := range m.Files {
		rc, err := c.Read(context.Background(), m.ID, f.Path, 0, f.Size)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != f.SHA256 || int64(len(data)) != f.Size {
			t.Fatalf("%s: %d bytes that do not hash as the manifest says", f.Path, len(data))
		}
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, os.FileMode(f.Mode)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// A copy taken while blocks are produced opens as a working engine at the
// copied height: the block there is the one the facts describe, and the
// restored engine goes on producing on top of it.
func TestSnapshotOpensAsAnEngine(t *testing.T) {
	cfg := nodeConfig(t, "solo", true)
	n := startNode(t, cfg)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "first blocks", func() bool { info, err := n.client.Chain(ctx); return err == nil && info.Height >= 2 })
	// A Raft snapshot on disk, which the copy links.
	if err := n.app.node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.client.Submit(ctx, [][]byte{anchorJSON(1), anchorJSON(2)}); err != nil {
		t.Fatal(err)
	}
	sc := snapshotapi.New(n.http.URL, servicetest.Operator())
	m, err := sc.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	facts := m.Facts.Chain
	if facts == nil || facts.Height < 2 || facts.ChainID != "test" || facts.ValidatorKey == "" || facts.SignedHeight < facts.Height {
		t.Fatalf("facts = %+v", facts)
	}
	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
		if f.Path == "validator.key" && f.Mode != 0o600 {
			t.Errorf("validator.key has mode %o", f.Mode)
		}
	}
	for _, want := range []string{"chain.db", "guard.db", "raft.db", "validator.key", "validator.pub", "snapshots/*/meta.json", "snapshots/*/state.bin"} {
		found := false
		for _, p := range paths {
			ok, _ := path.Match(want, p)
			found = found || ok
		}
		if !found {
			t.Fatalf("%s is not in the copy %v", want, paths)
		}
	}
	restored := fetchSnapshot(t, sc, m)
	if err := sc.Drop(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	// The engine kept producing meanwhile.
	testenv.Eventually(t, 10*time.Second, "blocks after the copy", func() bool {
		info, err := n.client.Chain(ctx)
		return err == nil && info.Height > facts.Height
	})
	n.stop()

	cfg.DataDir = restored
	r := startNode(t, cfg)
	b, err := r.client.Block(ctx, facts.Height)
	if err != nil {
		t.Fatalf("block %d of the restored engine: %v", facts.Height, err)
	}
	h, err := b.Header()
	if err != nil {
		t.Fatal(err)
	}
	if base64.StdEncoding.EncodeToString(h.Root) != facts.Root || h.TreeSize != facts.TreeSize {
		t.Fatalf("restored block %d: root %x size %d; the facts say %s %d", facts.Height, h.Root, h.TreeSize, facts.Root, facts.TreeSize)
	}
	testenv.Eventually(t, 10*time.Second, "the restored engine produces", func() bool {
		info, err := r.client.Chain(ctx)
		return err == nil && info.Height > facts.Height+1
	})
	info, err := r.client.Chain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains([]byte(facts.ValidatorKey), []byte("solo")) || len(info.Validators) != 1 || info.Validators[0] != facts.ValidatorKey {
		t.Fatalf("validators %v, the copy's key %s", info.Validators, facts.ValidatorKey)
	}
	a := chain.NewAuditor(chain.Origin("test"), nil)
	for height := uint64(1); height <= info.Height; height++ {
		b, err := r.client.Block(ctx, height)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Next(b); err != nil {
			t.Fatalf("audit of the restored chain at %d: %v", height, err)
		}
	}
}

// TestChainBehindRaftSnapshotIsRestored: an engine whose chain store is
// behind Raft's newest snapshot (a leader's snapshot written, its apply
// cut off by a power cut) restores that snapshot on start, so that it
// holds every block Raft counts applied and never signs another block at
// a committed height.
func TestChainBehindRaftSnapshotIsRestored(t *testing.T) {
	cfg := nodeConfig(t, "solo", true)
	n := startNode(t, cfg)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "first blocks", func() bool { info, err := n.client.Chain(ctx); return err == nil && info.Height >= 2 })
	old := filepath.Join(t.TempDir(), "chain.db")
	head, err := n.app.node.store.CopyTo(old)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "three blocks more", func() bool { return n.app.node.store.Height() >= head.Height+3 })
	top := n.app.node.store.Height() // the snapshot holds at least these
	if err := n.app.node.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	committed, err := n.app.node.store.Block(head.Height + 1)
	if err != nil {
		t.Fatal(err)
	}
	n.kill()
	// What a follower holds when the install was cut off: the older
	// chain store, and no signature of its own at those heights.
	data, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, "chain.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(cfg.DataDir, "guard.db")); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, cfg)
	if h := n2.app.node.store.Height(); h < top {
		t.Fatalf("restarted at height %d, below the snapshot's %d", h, top)
	}
	b, err := n2.app.node.store.Block(head.Height + 1)
	if err != nil || b.Hash != committed.Hash {
		t.Fatalf("block %d after restart: %v %v, want the committed %s", head.Height+1, b, err, committed.Hash)
	}
}

// TestLastLine: a snapshot's last line is found from its end, however
// long its lines (windows beyond the first), with or without its newline.
func TestLastLine(t *testing.T) {
	long1, long2 := strings.Repeat("a", 100<<10), strings.Repeat("b", 200<<10)
	for content, want := range map[string]string{"": "", "one": "one", "one\n": "one", long1 + "\n" + long2 + "\n": long2, "x\n" + long1: long1} {
		path := filepath.Join(t.TempDir(), "state.bin")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := lastLine(path); err != nil || string(got) != want {
			t.Errorf("last line of %d bytes: %d bytes, %v; want %d", len(content), len(got), err, len(want))
		}
	}
}
