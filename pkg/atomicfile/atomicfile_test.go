package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: a file is replaced with its mode, and a write that fails
// leaves the old content and no temporary file behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := Write(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "two" {
		t.Fatalf("content %q, %v", b, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, %v", fi.Mode(), err)
	}
	broken := errors.New("the disk is full")
	err := WriteFunc(p, 0o600, func(f *os.File) error {
		_, _ = f.WriteString("th")
		return broken
	})
	if !errors.Is(err, broken) {
		t.Fatalf("a failing write: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "two" {
		t.Errorf("after a failed write the file holds %q, want its old content", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the folder holds %d entries, want the file alone", len(ents))
	}
	if err := Write(filepath.Join(dir, "missing", "key"), nil, 0o600); err == nil {
		t.Error("a write into a missing folder succeeded")
	}
}
