package chain

import (
	"os"
	"path/filepath"
	"strings"
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

// TestCanonicalVerifier: a validator key is taken for a new system change
// only as note spells it; every other spelling ParseVerifier reads as the
// same key (space around it, the hash in upper case) is refused, as the chain compares keys as strings.
func TestCanonicalVerifier(t *testing.T) {
	var vkey string
	var parts []string
	// A key whose hash has a letter, which an upper-case spelling changes
	// (one in 43 has none).
	for range 100 {
		_, k, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "engine"), "pi1")
		if err != nil {
			t.Fatal(err)
		}
		if err := CanonicalVerifier(k); err != nil {
			t.Fatalf("the node's own key: %v", err)
		}
		if vkey, parts = k, strings.SplitN(k, "+", 3); strings.ToUpper(parts[1]) != parts[1] {
			break
		}
	}
	for name, k := range map[string]string{
		"a newline after it": vkey + "\n",
		"a space before it":  " " + vkey,
		"an upper-case hash": parts[0] + "+" + strings.ToUpper(parts[1]) + "+" + parts[2],
	} {
		if _, err := ParseVerifier(k); err != nil {
			t.Errorf("%s: ParseVerifier refuses it already (%v): the case tests nothing", name, err)
		}
		if err := CanonicalVerifier(k); err == nil {
			t.Errorf("%s: %q taken", name, k)
		}
		tx := &Transaction{Type: TypeSystem, System: &SystemChange{Action: ActionRemoveValidator, Key: k, Node: "pi1"}}
		if err := tx.ValidateNew(); err == nil {
			t.Errorf("%s: a new system change with it is taken", name)
		}
	}
}
