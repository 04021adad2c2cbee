package stack

import (
	"os"
	"path/filepath"
	"testing"
)

// A log line that could not be written is not lost in silence: close
// returns the first error the file met.
func TestRotatingFileKeepsFirstError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	r, err := openRotating(p, true)
	if err != nil {
		t.Fatal(err)
	}
	r.writeLine("a | ", []byte("one"))
	if err := r.f.Close(); err != nil { // the next write fails
		t.Fatal(err)
	}
	r.writeLine("a | ", []byte("two"))
	if err := r.close(); err == nil {
		t.Error("close after a failed write returned nil")
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "a | one\n" {
		t.Errorf("log = %q, want the line written before the failure", got)
	}

	r, err = openRotating(p, false)
	if err != nil {
		t.Fatal(err)
	}
	r.writeLine("", []byte("three"))
	if err := r.close(); err != nil {
		t.Errorf("close = %v, want nil", err)
	}
}
