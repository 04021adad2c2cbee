package iostreams

import (
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/charmbracelet/lipgloss"
)

// Table writes rows as columns, the first row (the header) in bold and
// every other cell in the style style gives it (nil: plain). Cells are
// padded before they are colored, so escape codes do not upset the
// columns; a cell's own control characters are escaped (Safe).
func (st *Styles) Table(w io.Writer, rows [][]string, style func(col int, cell string) lipgloss.Style) {
	if len(rows) == 0 {
		return
	}
	widths := make([]int, len(rows[0]))
	safe := make([][]string, len(rows)) // the caller's rows stay as they are
	for ri, r := range rows {
		safe[ri] = make([]string, len(r))
		for i, c := range r {
			safe[ri][i] = Safe(c)
			widths[i] = max(widths[i], len(safe[ri][i]))
		}
	}
	for ri, r := range safe {
		var line strings.Builder
		for i, c := range r {
			cell := c
			if i < len(r)-1 {
				cell = fmt.Sprintf("%-*s", widths[i]+2, c)
			}
			switch {
			case ri == 0:
				cell = st.Bold.Render(cell)
			case style != nil:
				cell = style(i, c).Render(cell)
			}
			line.WriteString(cell)
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
	}
}

// Bytes is n bytes for people: "512 B", "1.4 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Safe is s fit to print on a terminal as one line (a table's cell, a
// field): every control character (an escape sequence's ESC, a newline, a
// tab, C1 codes), every format character (the bidirectional overrides,
// zero-width ones) and every byte that is not UTF-8 written as a Go
// escape (\x1b, \u202e), the rest as it is. Text a host, a service or a
// client chose (log lines, container states, release records, remote
// errors) passes through it, or SafeText, before text output, so that it
// cannot move the cursor, rewrite earlier lines, retitle the window, set
// the clipboard, show other words than it holds, nor add a row to a
// table. --json is data for a program, which shows it as it sees fit:
// encoding/json escapes C0 codes there, not DEL or C1 ones.
func Safe(s string) string { return escapeControls(s, false) }

// SafeText is Safe for text of several lines (an error that quotes a
// command's output): newlines and tabs stay.
func SafeText(s string) string { return escapeControls(s, true) }

func escapeControls(s string, lines bool) string {
	unsafe := func(r rune) bool {
		kept := lines && (r == '\n' || r == '\t')
		return r == utf8.RuneError || (unicode.IsControl(r) || unicode.Is(unicode.Cf, r)) && !kept
	}
	i := strings.IndexFunc(s, unsafe)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafe(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafe(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// SafeStrings replaces, in place, every string v reaches (through
// pointers, structs' exported fields, slices and maps' values) with its
// Safe form: what a command read from hosts, made fit for its text
// output at once, however many of its fields that output shows. Call it
// on what is about to be printed as text, never on what --json prints.
func SafeStrings(v any) { safeValue(reflect.ValueOf(v)) }

func safeValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			safeValue(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				safeValue(v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			safeValue(v.Index(i))
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := v.MapIndex(k)
			switch e.Kind() {
			case reflect.String:
				v.SetMapIndex(k, reflect.ValueOf(Safe(e.String())).Convert(e.Type()))
			case reflect.Pointer:
				safeValue(e)
			}
		}
	case reflect.String:
		if v.CanSet() {
			v.SetString(Safe(v.String()))
		}
	}
}

// Progress writes the progress lines of a command that works on several
// hosts at once to one stream (stderr): each line whole, and what a host
// or its services put in it escaped (SafeText).
type Progress struct {
	mu sync.Mutex
	w  io.Writer
}

// NewProgress writes progress lines to w.
func NewProgress(w io.Writer) *Progress { return &Progress{w: w} }

// Sayer returns the function a host's work says its progress with: each
// line begins with prefix ("pi2: ").
func (p *Progress) Sayer(prefix string) func(format string, args ...any) {
	return func(format string, args ...any) {
		line := SafeText(prefix + fmt.Sprintf(format, args...))
		p.mu.Lock()
		defer p.mu.Unlock()
		fmt.Fprintln(p.w, line)
	}
}

// Event writes one EventLine.
func (p *Progress) Event(target, step, status, message string) {
	line := EventLine(target, step, status, message)
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, line)
}

// EventLine is one event of a deploy, rollback, restart or restore, in
// the columns every such command prints: the target, the step, the status
// and the message, which may quote a host (a lock's holder, a container's
// error) and so is escaped.
func EventLine(target, step, status, message string) string {
	return SafeText(fmt.Sprintf("%-8s %-9s %-5s %s", target, step, status, message))
}
