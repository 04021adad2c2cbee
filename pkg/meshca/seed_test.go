package meshca

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// seedDir makes a seed CA as a renderer would: Open in a directory of its
// own.
func seedDir(t *testing.T, opts Options) (string, *CA) {
	t.Helper()
	dir := t.TempDir()
	ca, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir, ca
}

func mustSeed(t *testing.T, dir string) *Seed {
	t.Helper()
	s, err := LoadSeed(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustSign(t *testing.T, ca *CA, svc string) Leaf {
	t.Helper()
	leaf, err := ca.Sign(context.Background(), csrFor(t, p256(t)), svc)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// TestOpenSeeded: two CAs started from one seed have its root; each one's
// leaves verify against the other's bundle; the seed is not written.
func TestOpenSeeded(t *testing.T) {
	ctx := context.Background()
	dir, origin := seedDir(t, Options{})
	before, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil { // as mounted read-only
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
	seed := mustSeed(t, dir)
	if seed.Fingerprint() != origin.Fingerprint() {
		t.Fatalf("seed fingerprint %s, want %s", seed.Fingerprint(), origin.Fingerprint())
	}
	var cas []*CA
	for range 2 {
		d := t.TempDir()
		if found, err := Exists(d); err != nil || found {
			t.Fatalf("Exists on an empty directory = %v, %v", found, err)
		}
		ca, err := OpenSeeded(ctx, d, seed, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if ca.Fingerprint() != seed.Fingerprint() {
			t.Fatalf("a seeded CA has root %s, want the seed's %s", ca.Fingerprint(), seed.Fingerprint())
		}
		if found, err := Exists(d); err != nil || !found {
			t.Fatalf("Exists after OpenSeeded = %v, %v", found, err)
		}
		if _, err := OpenSeeded(ctx, d, seed, Options{}); err == nil || !strings.Contains(err.Error(), "already") {
			t.Fatalf("OpenSeeded over a CA = %v, want a refusal", err)
		}
		cas = append(cas, ca)
	}
	for i, ca := range cas {
		other := cas[1-i]
		if err := verify(mustSign(t, ca, "engine"), other.Bundle(), time.Now()); err != nil {
			t.Errorf("a leaf of CA %d does not verify against CA %d's bundle: %v", i, 1-i, err)
		}
	}
	after, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil || string(after) != string(before) {
		t.Fatalf("the seed changed (%v)", err)
	}
}

// TestAdopt: a CA with a root of its own adopts the seed. Its old leaves
// verify against its new bundle until they expire, its new leaves verify
// against its old bundle (a service that has not renewed), against the
// bundle of another CA started from the seed and, after the overlap,
// without the cross certificate.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	clk := &clock{time.Now()}
	opts := Options{LeafTTL: time.Hour, Now: clk.now}
	seedPath, _ := seedDir(t, opts)
	seed := mustSeed(t, seedPath)
	peer, err := OpenSeeded(ctx, t.TempDir(), seed, opts)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	local, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	oldFP, oldBundle := local.Fingerprint(), local.Bundle()
	oldLeaf := mustSign(t, local, "gateway")

	clk.t = clk.t.Add(10 * time.Minute)
	res, err := local.Adopt(ctx, seed)
	if err != nil {
		t.Fatal(err)
	}
	if res.Previous != oldFP || res.Root != seed.Fingerprint() || local.Fingerprint() != seed.Fingerprint() {
		t.Fatalf("adoption %+v; root now %s, want the seed's %s", res, local.Fingerprint(), seed.Fingerprint())
	}
	if want := clk.t.Add(time.Hour + backdate); !res.PreviousTrustedUntil.Equal(want) {
		t.Errorf("previous root trusted until %s, want %s", res.PreviousTrustedUntil, want)
	}
	newBundle := local.Bundle()
	if len(newBundle) != 2 {
		t.Fatalf("bundle after adopting has %d roots, want the seed's and the old one", len(newBundle))
	}
	newLeaf := mustSign(t, local, "engine")
	if len(newLeaf.Chain) != 3 {
		t.Fatalf("a leaf issued during the overlap has %d certificates, want leaf, intermediate, cross", len(newLeaf.Chain))
	}
	for name, tc := range map[string]struct {
		leaf  Leaf
		roots []*x509.Certificate
	}{
		"old leaf, new bundle":              {oldLeaf, newBundle},
		"new leaf, old bundle":              {newLeaf, oldBundle},
		"new leaf, the seeded peer's":       {newLeaf, peer.Bundle()},
		"the seeded peer's leaf, new":       {mustSign(t, peer, "engine"), newBundle},
		"new leaf without cross, seed root": {Leaf{Chain: newLeaf.Chain[:2]}, []*x509.Certificate{seed.a.root}},
	} {
		if err := verify(tc.leaf, tc.roots, clk.t); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// Kept on disk; adopting the same seed again changes nothing.
	reopened, err := Open(ctx, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if reopened.Fingerprint() != seed.Fingerprint() || len(reopened.Bundle()) != 2 {
		t.Fatal("the adoption was not kept on disk")
	}
	if again, err := reopened.Adopt(ctx, seed); err != nil || !again.PreviousTrustedUntil.IsZero() || len(reopened.Bundle()) != 2 {
		t.Fatalf("adopting the same seed again: %+v, %v; bundle %d roots", again, err, len(reopened.Bundle()))
	}

	// After the overlap: the old root is gone, leaves carry no cross.
	clk.t = clk.t.Add(time.Hour + 2*time.Minute)
	if n := len(local.Bundle()); n != 1 {
		t.Fatalf("bundle after the overlap has %d roots, want 1", n)
	}
	late := mustSign(t, local, "engine")
	if len(late.Chain) != 2 {
		t.Fatalf("a leaf issued after the overlap has %d certificates, want 2", len(late.Chain))
	}
	if err := verify(late, peer.Bundle(), clk.t); err != nil {
		t.Fatal(err)
	}
}

// TestAdoptDuringSeedRotation: a seed in the middle of its own rotation is
// adopted by a CA with another root. New leaves carry both cross
// certificates, so a peer trusting only the seed's previous root and one
// trusting only the local old root both accept them.
func TestAdoptDuringSeedRotation(t *testing.T) {
	ctx := context.Background()
	clk := &clock{time.Now()}
	opts := Options{LeafTTL: time.Hour, Now: clk.now}
	seedPath, seedCA := seedDir(t, opts)
	seedBefore := seedCA.Bundle()
	if err := seedCA.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	local, err := Open(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	localBefore := local.Bundle()
	if _, err := local.Adopt(ctx, mustSeed(t, seedPath)); err != nil {
		t.Fatal(err)
	}
	if n := len(local.Bundle()); n != 3 {
		t.Fatalf("bundle has %d roots, want the seed's two and the local old one", n)
	}
	leaf := mustSign(t, local, "engine")
	if len(leaf.Chain) != 4 {
		t.Fatalf("leaf chain has %d certificates, want leaf, intermediate and two crosses", len(leaf.Chain))
	}
	for name, roots := range map[string][]*x509.Certificate{
		"the seed's previous root": seedBefore, "the local old root": localBefore, "the bundle": local.Bundle(),
	} {
		if err := verify(leaf, roots, clk.t); err != nil {
			t.Errorf("against %s: %v", name, err)
		}
	}
}

func TestLoadSeedRefusesCorrupt(t *testing.T) {
	dir, _ := seedDir(t, Options{})
	path := filepath.Join(dir, stateFile)
	data, _ := os.ReadFile(path)
	broken := strings.Replace(string(data), `"intermediate_cert": "-----BEGIN CERTIFICATE-----\nMII`, `"intermediate_cert": "-----BEGIN CERTIFICATE-----\nXXX`, 1)
	if broken == string(data) {
		t.Fatal("test did not corrupt the seed")
	}
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadSeed(dir)
	if err == nil || !strings.Contains(err.Error(), "intermediate_cert") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("LoadSeed on a corrupt seed = %v, want an error naming the directory and intermediate_cert", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatal("the error shows key material")
	}
	if _, err := LoadSeed(t.TempDir()); err == nil || !strings.Contains(err.Error(), stateFile) {
		t.Fatalf("LoadSeed on an empty directory = %v, want an error naming %s", err, stateFile)
	}
}
