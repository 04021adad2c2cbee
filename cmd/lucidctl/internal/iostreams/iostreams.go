// Package iostreams holds lucidctl's input and output streams and what is
// known about them: whether each is a terminal and whether color is wanted.
//
// The rule it serves: stdout carries the result, everything else goes to
// stderr, and color appears only on a terminal, never when NO_COLOR is set
// or --no-color is given, and never as the only signal.
package iostreams

import (
	"bytes"
	"io"
	"os"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"golang.org/x/term"
)

// IOStreams are the streams a command reads and writes.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer

	// result wraps Out and keeps its first write error, so that commands
	// print their result without checking every line, and a result that
	// did not reach stdout (a full disk under `> file`) still fails the
	// run: see OutErr.
	result *resultWriter

	outTTY, errTTY bool
	noColor        bool
}

// resultWriter remembers the first error of the writer it wraps, and
// writes nothing after it: a result cut short must not look whole.
type resultWriter struct {
	w   io.Writer
	err error
}

func (r *resultWriter) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.w.Write(p)
	r.err = err
	return n, err
}

// OutErr is the first error writing to stdout, or nil. lucidctl reports
// it once, at exit, instead of at every line of a result.
func (s *IOStreams) OutErr() error {
	if s.result == nil {
		return nil
	}
	return s.result.err
}

func newStreams(in io.Reader, out, errOut io.Writer) *IOStreams {
	r := &resultWriter{w: out}
	return &IOStreams{In: in, Out: r, ErrOut: errOut, result: r}
}

// System returns the process's own streams, with terminal and NO_COLOR
// detection.
func System() *IOStreams {
	s := newStreams(os.Stdin, os.Stdout, os.Stderr)
	s.outTTY = term.IsTerminal(int(os.Stdout.Fd()))
	s.errTTY = term.IsTerminal(int(os.Stderr.Fd()))
	// https://no-color.org: any non-empty value disables color.
	if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		s.noColor = true
	}
	return s
}

// Test returns streams backed by buffers, none of them a terminal.
func Test() (s *IOStreams, in, out, errOut *bytes.Buffer) {
	in, out, errOut = &bytes.Buffer{}, &bytes.Buffer{}, &bytes.Buffer{}
	return newStreams(in, out, errOut), in, out, errOut
}

// SetTTY marks stdout and stderr as terminals or not; tests use it.
func (s *IOStreams) SetTTY(out, err bool) { s.outTTY, s.errTTY = out, err }

// DisableColor turns color off for good (--no-color).
func (s *IOStreams) DisableColor() { s.noColor = true }

// IsStderrTTY reports whether stderr is a terminal.
func (s *IOStreams) IsStderrTTY() bool { return s.errTTY }

// ColorOut reports whether stdout may be colored.
func (s *IOStreams) ColorOut() bool { return s.outTTY && !s.noColor }

// ColorErr reports whether stderr may be colored.
func (s *IOStreams) ColorErr() bool { return s.errTTY && !s.noColor }

// OutStyles returns styles for writing to stdout.
func (s *IOStreams) OutStyles() *Styles {
	w := s.Out
	if s.result != nil && w == io.Writer(s.result) {
		w = s.result.w // the terminal itself, for its color profile
	}
	return newStyles(w, s.ColorOut())
}

// ErrStyles returns styles for writing to stderr.
func (s *IOStreams) ErrStyles() *Styles { return newStyles(s.ErrOut, s.ColorErr()) }

// Styles are lipgloss styles bound to one stream; without color they render
// text unchanged.
type Styles struct {
	Success lipgloss.Style
	Warning lipgloss.Style
	Error   lipgloss.Style
	Bold    lipgloss.Style
	Dim     lipgloss.Style
	palette []lipgloss.Style
}

func newStyles(w io.Writer, color bool) *Styles {
	r := lipgloss.NewRenderer(w)
	if !color {
		r.SetColorProfile(termenv.Ascii)
	} else if r.ColorProfile() == termenv.Ascii {
		r.SetColorProfile(termenv.ANSI)
	}
	st := &Styles{
		Success: r.NewStyle().Foreground(lipgloss.Color("2")),
		Warning: r.NewStyle().Foreground(lipgloss.Color("3")),
		Error:   r.NewStyle().Foreground(lipgloss.Color("1")).Bold(true),
		Bold:    r.NewStyle().Bold(true),
		Dim:     r.NewStyle().Faint(true),
	}
	for _, c := range []string{"6", "5", "4", "3", "2", "14", "13", "12"} {
		st.palette = append(st.palette, r.NewStyle().Foreground(lipgloss.Color(c)))
	}
	return st
}

// Pick returns the i-th color of a palette used to tell services apart.
func (st *Styles) Pick(i int) lipgloss.Style { return st.palette[i%len(st.palette)] }
