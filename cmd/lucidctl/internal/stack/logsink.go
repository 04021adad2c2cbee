package stack

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/supervise"
)

// maxLogBytes is the size at which a log file is rotated to <name>.1, so a
// stack left running for weeks does not fill the disk.
const maxLogBytes = 16 << 20

// logSink writes every service's output to its own log file, to the merged
// stack log ("<service> | <line>") that `lucidctl logs` reads, and, for a
// foreground `up`, to the terminal with a colored prefix.
type logSink struct {
	mu       sync.Mutex
	files    map[string]*rotatingFile
	stack    *rotatingFile
	term     io.Writer // nil when detached
	styles   *iostreams.Styles
	width    int
	prefixes map[string]string
}

var _ supervise.LogSink = (*logSink)(nil)

// supervisorName labels lucidctl's own lines in the merged log.
const supervisorName = "lucidctl"

func newLogSink(l layout, names []string, term io.Writer, styles *iostreams.Styles) (*logSink, error) {
	if err := l.makePrivate(); err != nil {
		return nil, err
	}
	s := &logSink{files: map[string]*rotatingFile{}, term: term, styles: styles, prefixes: map[string]string{}}
	all := append([]string{supervisorName}, names...)
	for _, n := range all {
		s.width = max(s.width, len(n))
	}
	for i, n := range all {
		s.prefixes[n] = styles.Pick(i).Render(fmt.Sprintf("%-*s |", s.width, n))
	}
	var err error
	if s.stack, err = openRotating(l.stackLog(), true); err != nil {
		return nil, err
	}
	for _, n := range names {
		f, err := openRotating(l.serviceLog(n), true)
		if err != nil {
			_ = s.Close() // nothing was written yet
			return nil, err
		}
		s.files[n] = f
	}
	return s, nil
}

// Line implements supervise.LogSink.
func (s *logSink) Line(program string, _ supervise.Stream, line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[program]; f != nil {
		f.writeLine("", line)
	}
	s.stack.writeLine(program+" | ", line)
	if s.term != nil {
		if _, err := fmt.Fprintf(s.term, "%s %s\n", s.prefixes[program], line); err != nil {
			s.term = nil // gone (a closed pipe): the log files still have every line
		}
	}
}

// Note records one of lucidctl's own lines (a service became ready, died,
// was given up on).
func (s *logSink) Note(format string, args ...any) {
	s.Line(supervisorName, supervise.Stderr, []byte(fmt.Sprintf(format, args...)))
}

// Close closes the log files. Its error is the first a file met while it
// was written, rotated or closed: lines that error names may be lost.
func (s *logSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.close())
	}
	if s.stack != nil {
		errs = append(errs, s.stack.close())
	}
	return errors.Join(errs...)
}

// rotatingFile is an append-only log file that moves itself aside to
// <path>.1 when it grows past maxLogBytes.
type rotatingFile struct {
	path string
	f    *os.File
	size int64
	// err is the first write, rotation or close error, which close returns:
	// a log line has no caller to report to.
	err error
}

// openRotating opens path for appending; fresh moves a previous run's file
// aside first, so each run starts a new log and the last one is kept.
func openRotating(path string, fresh bool) (*rotatingFile, error) {
	if fresh {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			_ = os.Rename(path, path+".1")
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close() // nothing was written
		return nil, err
	}
	return &rotatingFile{path: path, f: f, size: fi.Size()}, nil
}

func (r *rotatingFile) writeLine(prefix string, line []byte) {
	if r.f == nil {
		return
	}
	n := int64(len(prefix) + len(line) + 1)
	if r.size+n > maxLogBytes {
		r.keep(r.f.Close())
		_ = os.Rename(r.path, r.path+".1")
		f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			r.keep(err)
			r.f = nil
			return
		}
		r.f, r.size = f, 0
	}
	var b strings.Builder
	b.Grow(int(n))
	b.WriteString(prefix)
	b.Write(line)
	b.WriteByte('\n')
	w, err := io.WriteString(r.f, b.String())
	r.keep(err)
	r.size += int64(w)
}

// keep records err if it is the first.
func (r *rotatingFile) keep(err error) {
	if r.err == nil && err != nil {
		r.err = fmt.Errorf("log %s: %w", r.path, err)
	}
}

// close closes the file and returns the first error it met.
func (r *rotatingFile) close() error {
	if r.f != nil {
		r.keep(r.f.Close())
		r.f = nil
	}
	return r.err
}
