package stack

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSkipToTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("a\nb\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]string{0: "", 1: "c\n", 2: "b\nc\n", 3: "a\nb\nc\n", 10: "a\nb\nc\n"} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := skipToTail(f, n); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Error(err)
		}
		if string(got) != want {
			t.Errorf("tail %d = %q, want %q", n, got, want)
		}
	}
}

func TestFilteredTail(t *testing.T) {
	var out strings.Builder
	w := &lineWriter{out: &out, styles: nil, prefixed: true, only: "lucidctl"}
	w.styles = testStyles()
	src := "lucidctl | one\nengine | x\nlucidctl | two\nengine | y\nlucidctl | three\nengine | z\n"
	if err := w.tail(bufio.NewReader(strings.NewReader(src)), 2); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); strings.Count(got, "\n") != 2 || !strings.Contains(got, "two") || !strings.Contains(got, "three") {
		t.Errorf("filtered tail = %q", got)
	}
}
