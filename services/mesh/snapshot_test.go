package mesh

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/pkg/meshca"
)

// The mesh copy holds the CA, which opens with the same root, and the
// registry database.
func TestSnapshotOfTheCA(t *testing.T) {
	data := t.TempDir()
	ca, err := meshca.Open(context.Background(), filepath.Join(data, "ca"), meshca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := openRegistrar(filepath.Join(data, "mesh.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.close() }()
	dir := t.TempDir()
	cp, err := (&App{ca: ca, reg: reg}).takeSnapshot(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Facts.Mesh == nil || cp.Facts.Mesh.RootFingerprint != ca.Fingerprint() {
		t.Fatalf("facts = %+v, root %s", cp.Facts.Mesh, ca.Fingerprint())
	}
	restored, err := meshca.Open(context.Background(), filepath.Join(dir, "ca"), meshca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if restored.Fingerprint() != ca.Fingerprint() {
		t.Fatal("the copied CA has another root")
	}
	r, err := openRegistrar(filepath.Join(dir, "mesh.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_ = r.close()
}
