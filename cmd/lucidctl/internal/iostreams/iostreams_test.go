package iostreams

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestColorRules(t *testing.T) {
	s, _, _, _ := Test()
	if s.ColorOut() || s.ColorErr() {
		t.Error("color without a terminal")
	}
	s.SetTTY(true, false)
	if !s.ColorOut() || s.ColorErr() {
		t.Error("color must follow each stream's own terminal state")
	}
	if got := s.OutStyles().Error.Render("x"); !strings.Contains(got, "\x1b[") {
		t.Errorf("no escape codes on a terminal: %q", got)
	}
	s.DisableColor()
	if s.ColorOut() {
		t.Error("color after DisableColor")
	}
	if got := s.OutStyles().Error.Render("x"); got != "x" {
		t.Errorf("styled text without color = %q", got)
	}
}

func TestSystemHonoursNoColor(t *testing.T) {
	t.Setenv("NO_COLOR", "1")
	s := System()
	s.SetTTY(true, true)
	if s.ColorOut() || s.ColorErr() {
		t.Error("NO_COLOR ignored")
	}
}

// TestResultWriteErrorIsKept: a result that could not be written is
// reported once, and nothing is written after the first failure.
func TestResultWriteErrorIsKept(t *testing.T) {
	full := &failingWriter{after: 5}
	s := newStreams(nil, full, io.Discard)
	if s.OutErr() != nil {
		t.Fatal("error before any write")
	}
	fmt.Fprintln(s.Out, "1234")
	fmt.Fprintln(s.Out, "5678")
	fmt.Fprintln(s.Out, "9")
	if !errors.Is(s.OutErr(), errDiskFull) || full.writes != 2 {
		t.Errorf("OutErr %v after %d writes; want the disk-full error and no write after it", s.OutErr(), full.writes)
	}
}

var errDiskFull = errors.New("no space left on device")

type failingWriter struct{ after, n, writes int }

func (f *failingWriter) Write(p []byte) (int, error) {
	f.writes++
	if f.n+len(p) > f.after {
		return 0, errDiskFull
	}
	f.n += len(p)
	return len(p), nil
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 1 << 20: "1.0 MiB", 1101 << 20: "1.1 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestSafe: a line keeps its text and loses its control characters,
// escaped; SafeText keeps newlines and tabs; SafeStrings reaches every
// string of a structure, and Table's cells cannot add a row.
func TestSafe(t *testing.T) {
	for in, want := range map[string]string{
		"plain, é ✓":             "plain, é ✓",
		"a\x1b[2Kb":              `a\x1b[2Kb`,
		"two\nlines\tx":          `two\x0alines\x09x`,
		"c1 \u009b31m, del \x7f": `c1 \x9b31m, del \x7f`,
		"bad \xff byte":          `bad \xff byte`,
		"rlo \u202eevil":         `rlo \u202eevil`,
	} {
		if got := Safe(in); got != want {
			t.Errorf("Safe(%q) = %q, want %q", in, got, want)
		}
	}
	if got := SafeText("one\n\ttwo\x1b"); got != "one\n\ttwo\\x1b" {
		t.Errorf("SafeText = %q", got)
	}
	type inner struct{ S string }
	v := struct {
		A    string
		B    []string
		M    map[string]string
		P    *inner
		priv string
	}{A: "\x1b", B: []string{"\a"}, M: map[string]string{"k": "\x1b"}, P: &inner{S: "\x1b"}, priv: "\x1b"}
	SafeStrings(&v)
	if v.A != `\x1b` || v.B[0] != `\x07` || v.M["k"] != `\x1b` || v.P.S != `\x1b` || v.priv != "\x1b" {
		t.Errorf("SafeStrings: %+v", v)
	}
	var b strings.Builder
	st := &Styles{}
	st.Table(&b, [][]string{{"A", "B"}, {"x\nforged\trow", "y"}}, nil)
	if strings.Count(b.String(), "\n") != 2 {
		t.Errorf("a cell added a row:\n%s", b.String())
	}
}

// TestProgress: hosts saying their progress at once leave each line whole
// and prefixed, with a host's escape sequences escaped.
func TestProgress(t *testing.T) {
	var b strings.Builder
	p := NewProgress(&b)
	done := make(chan struct{})
	for _, host := range []string{"pi1", "pi2"} {
		go func() {
			defer func() { done <- struct{}{} }()
			say := p.Sayer(host + ": ")
			for range 100 {
				say("release %s", "r1\x1b[2K")
			}
		}()
	}
	<-done
	<-done
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	for _, l := range lines {
		if l != `pi1: release r1\x1b[2K` && l != `pi2: release r1\x1b[2K` {
			t.Fatalf("line %q", l)
		}
	}
	if len(lines) != 200 {
		t.Errorf("%d lines, want 200", len(lines))
	}
}
