package chain

import (
	"os"
	"path/filepath"
	"testing"
)

// TestLoadOrCreateKey: the first start makes the key pair, whole and with
// its modes, and leaves nothing else; later starts read the same pair; a
// temporary file a power cut left behind is not a key.
func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "engine")
	signer, vkey, err := LoadOrCreateKey(dir, "pi1")
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"validator.key": 0o600, "validator.pub": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("the data dir holds %d files, want the two keys: %v", len(ents), ents)
	}
	// A crash while the key was written leaves at most a temporary file.
	if err := os.WriteFile(filepath.Join(dir, ".validator.key.123"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	again, vkey2, err := LoadOrCreateKey(dir, "pi1")
	if err != nil {
		t.Fatal(err)
	}
	if vkey2 != vkey || again.KeyHash() != signer.KeyHash() {
		t.Errorf("the second start read another key: %s, first %s", vkey2, vkey)
	}
	// Without its private key (the cut came before it was renamed into
	// place), a node makes a new pair rather than stop for good.
	if err := os.Remove(filepath.Join(dir, "validator.key")); err != nil {
		t.Fatal(err)
	}
	if _, vkey3, err := LoadOrCreateKey(dir, "pi1"); err != nil || vkey3 == vkey {
		t.Errorf("after losing the private key: %v, key %s (was %s)", err, vkey3, vkey)
	}
}
