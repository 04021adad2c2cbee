// Package snapshot is the service side of online backups (the contract is
// pkg/api/snapshotapi): a service supplies one function that writes a
// consistent copy of its state into a fresh directory, and this package
// serves the rest: it takes copies one at a time, lists their files with
// each file's SHA-256 and per-piece SHA-256, serves byte ranges of them,
// drops them, and removes copies left unread for snapshotapi.MaxAge.
//
// A copy lives in <data dir>/.snapshots/<id>/ and mirrors the data
// directory's layout; its manifest is kept beside it in <id>.json, so a
// copy outlives a restart of the service until it expires. Copies are on
// the data directory's file system, so a service may hard-link files that
// are only ever appended to (the data chain's packs) instead of copying
// them; their piece hashes are remembered between copies, so a second
// backup does not hash the sealed packs again.
package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/service"
)

// Copy is what a service's TakeFunc wrote, besides the files themselves.
type Copy struct {
	// Facts are the figures of the copy, counted at the moment it stands
	// for.
	Facts snapshotapi.Facts
	// Lengths cut files short: a file named here (slash-separated,
	// relative to the copy) is served, listed and hashed only up to that
	// length. For a hard-linked file that goes on growing after the copy.
	Lengths map[string]int64
	// AppendOnly names the files that are only ever appended to, never
	// rewritten (hard-linked packs): their hashes are taken up from the
	// last whole piece hashed for an earlier copy.
	AppendOnly map[string]bool
}

// TakeFunc writes a consistent copy of a service's state into dir (empty,
// on the data directory's file system), laid out as in the data
// directory.
type TakeFunc func(ctx context.Context, dir string) (*Copy, error)

// Options configure a Server.
type Options struct {
	// Service is the catalog name of the service, for the manifest.
	Service string
	// DataDir is the service's data directory; copies go under
	// snapshotapi.SnapshotDir in it.
	DataDir string
	Take    TakeFunc
	// Now is the clock (default time.Now), for tests of expiry.
	Now    func() time.Time
	Logger *slog.Logger
}

// Server takes and serves one service's copies. It is safe for concurrent
// use; it takes one copy at a time.
type Server struct {
	opts   Options
	root   string // <data dir>/.snapshots
	taking sync.Mutex
	hashes *hashCache

	mu     sync.Mutex
	copies map[string]*snapshotapi.Manifest
	// read is when each copy was last read from: a first backup over a
	// slow link may read one for hours, and expiring it then would fail
	// every such backup halfway.
	read map[string]time.Time
}

// ErrBusy is returned by Take while another copy is being taken.
var ErrBusy = errors.New("a snapshot of this service is being taken")

// ErrNotFound is returned for an unknown copy or a file not in it.
var ErrNotFound = errors.New("no such snapshot or file")

// New returns the server of opts.Service's copies, having removed the
// expired ones.
func New(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, root: filepath.Join(opts.DataDir, snapshotapi.SnapshotDir), hashes: newHashCache(), copies: map[string]*snapshotapi.Manifest{}, read: map[string]time.Time{}}
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.Expire(); err != nil {
		return nil, err
	}
	return s, nil
}

// expireEvery is how often a running service looks for expired copies
// besides when it takes one.
const expireEvery = 10 * time.Minute

// Register installs the snapshot endpoints of the service srv serves, for
// the operator only; take writes its copies. Until ctx ends it also
// removes expired copies every few minutes, so a backup that died halfway
// costs disk for little more than snapshotapi.MaxAge even when no other
// backup follows.
func Register(ctx context.Context, srv *service.Server, take TakeFunc) (*Server, error) {
	cfg := srv.Config()
	s, err := New(Options{Service: cfg.Name, DataDir: cfg.DataDir, Take: take, Logger: srv.Logger()})
	if err != nil {
		return nil, err
	}
	s.Routes(srv)
	go s.expireLoop(ctx)
	return s, nil
}

func (s *Server) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.Expire(); err != nil {
				s.opts.Logger.Warn("expired snapshots not removed", "error", err)
			}
		}
	}
}

// Routes installs the endpoints on srv, behind the operator credential.
func (s *Server) Routes(srv *service.Server) {
	srv.Handle("POST /api/v1/snapshots", service.ForOperator(s.handleTake))
	srv.Handle("GET /api/v1/snapshots/{id}/files/{path...}", service.ForOperator(s.handleRead))
	srv.Handle("DELETE /api/v1/snapshots/{id}", service.ForOperator(s.handleDrop))
}

var idRE = regexp.MustCompile(`^[0-9A-Za-z-]{1,64}$`)

// newID names a copy by when it was taken (so names sort by age) and a
// random part (so two copies in one second differ).
func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

func (s *Server) manifestPath(id string) string { return filepath.Join(s.root, id+".json") }

// load reads the manifests of the copies a previous run left.
func (s *Server) load() error {
	entries, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshots: %w", err)
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !idRE.MatchString(id) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.root, e.Name()))
		if err != nil {
			return fmt.Errorf("snapshots: %w", err)
		}
		var m snapshotapi.Manifest
		if json.Unmarshal(data, &m) != nil || m.ID != id {
			continue // a manifest cut short by a crash: its copy expires by age
		}
		s.copies[id] = &m
	}
	return nil
}

// Expire removes the copies neither taken nor read from for
// snapshotapi.MaxAge, and anything else in the snapshot directory that old
// (a copy a crash interrupted).
func (s *Server) Expire() error {
	entries, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("snapshots: %w", err)
	}
	now := s.opts.Now()
	var errs []error
	for _, e := range entries {
		id := strings.TrimSuffix(e.Name(), ".json")
		s.mu.Lock()
		m, read := s.copies[id], s.read[id]
		s.mu.Unlock()
		var taken time.Time
		if m != nil {
			taken = m.TakenAt
			if read.After(taken) {
				taken = read
			}
		} else if fi, err := e.Info(); err == nil {
			taken = fi.ModTime()
		} else {
			continue // gone meanwhile
		}
		if now.Sub(taken) <= snapshotapi.MaxAge {
			continue
		}
		if m != nil {
			if err := s.Drop(id); err != nil && !errors.Is(err, ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.root, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove expired snapshots: %w", errors.Join(errs...))
	}
	return nil
}

// Take writes a new copy and returns its manifest; ErrBusy while another
// is being taken.
func (s *Server) Take(ctx context.Context) (*snapshotapi.Manifest, error) {
	if !s.taking.TryLock() {
		return nil, ErrBusy
	}
	defer s.taking.Unlock()
	if err := s.Expire(); err != nil {
		s.opts.Logger.Warn("expired snapshots not removed", "error", err)
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	now := s.opts.Now().UTC()
	id := newID(now)
	dir := filepath.Join(s.root, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshots: %w", err)
	}
	m, err := s.take(ctx, id, dir, now)
	if err != nil {
		// The copy is incomplete; removing it is tidying, the take's error
		// is what to report (and an expiry removes what is left).
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return m, nil
}

func (s *Server) take(ctx context.Context, id, dir string, now time.Time) (*snapshotapi.Manifest, error) {
	c, err := s.opts.Take(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("take a copy of %s: %w", s.opts.Service, err)
	}
	m := &snapshotapi.Manifest{ID: id, Service: s.opts.Service, TakenAt: now, Version: buildinfo.Read().Version, PieceSize: snapshotapi.PieceSize, Files: []snapshotapi.File{}, Facts: c.Facts}
	seen := map[fileKey]bool{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file", path)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		length, limited := c.Lengths[rel]
		f, key, err := s.hashes.file(ctx, path, rel, length, limited, c.AppendOnly[rel])
		if err != nil {
			return fmt.Errorf("hash %s: %w", rel, err)
		}
		seen[key] = true
		m.Files = append(m.Files, f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for rel := range c.Lengths {
		if !slices.ContainsFunc(m.Files, func(f snapshotapi.File) bool { return f.Path == rel }) {
			return nil, fmt.Errorf("the copy has no %s to cut", rel)
		}
	}
	s.hashes.keep(seen)
	slices.SortFunc(m.Files, func(a, b snapshotapi.File) int { return strings.Compare(a.Path, b.Path) })
	data, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if err := envfile.WriteAtomic(s.manifestPath(id), data); err != nil {
		return nil, fmt.Errorf("save the manifest: %w", err)
	}
	s.mu.Lock()
	s.copies[id] = m
	s.mu.Unlock()
	return m, nil
}

// Open returns the bytes [offset, offset+length) of file path of copy id.
// A path outside the copy, or not in its manifest, is ErrNotFound; a
// range beyond the file is a *RangeError.
func (s *Server) Open(id, path string, offset, length int64) (io.ReadCloser, error) {
	s.mu.Lock()
	m := s.copies[id]
	if m != nil {
		s.read[id] = s.opts.Now()
	}
	s.mu.Unlock()
	if m == nil || !fs.ValidPath(path) {
		return nil, ErrNotFound
	}
	i := slices.IndexFunc(m.Files, func(f snapshotapi.File) bool { return f.Path == path })
	if i < 0 {
		return nil, ErrNotFound
	}
	size := m.Files[i].Size
	if offset < 0 || length < 0 || offset > size || length > size-offset {
		return nil, &RangeError{Size: size}
	}
	// os.Root refuses whatever would lead out of the copy, symbolic links
	// included.
	root, err := os.OpenRoot(filepath.Join(s.root, id))
	if err != nil {
		return nil, ErrNotFound // dropped meanwhile
	}
	defer func() { _ = root.Close() }() // the file opened stays open
	f, err := root.Open(path)
	if err != nil {
		return nil, ErrNotFound
	}
	return &sectionFile{SectionReader: io.NewSectionReader(f, offset, length), f: f}, nil
}

type sectionFile struct {
	*io.SectionReader
	f *os.File
}

func (s *sectionFile) Close() error { return s.f.Close() }

// RangeError is a byte range that is not in the file.
type RangeError struct{ Size int64 }

func (e *RangeError) Error() string {
	return fmt.Sprintf("the range is not within the file's %d bytes", e.Size)
}

// Drop removes copy id.
func (s *Server) Drop(id string) error {
	s.mu.Lock()
	_, ok := s.copies[id]
	delete(s.copies, id)
	delete(s.read, id)
	s.mu.Unlock()
	if !ok {
		return ErrNotFound
	}
	// The manifest goes last: a copy whose removal failed is still found,
	// and expires, by it.
	if err := os.RemoveAll(filepath.Join(s.root, id)); err != nil {
		return fmt.Errorf("drop snapshot %s: %w", id, err)
	}
	if err := os.Remove(s.manifestPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("drop snapshot %s: %w", id, err)
	}
	return nil
}

// IDs lists the copies held, oldest first.
func (s *Server) IDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.copies))
	for id := range s.copies {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (s *Server) handleTake(w http.ResponseWriter, r *http.Request) error {
	m, err := s.Take(r.Context())
	if errors.Is(err, ErrBusy) {
		return &service.HTTPError{Status: http.StatusConflict, Code: service.CodeConflict, Message: "a snapshot of this service is being taken; try again when it is done", RetryAfter: 5}
	}
	if err != nil {
		return err
	}
	s.opts.Logger.InfoContext(r.Context(), "snapshot taken", "id", m.ID, "files", len(m.Files))
	service.WriteJSON(w, http.StatusCreated, m)
	return nil
}

func (s *Server) handleRead(w http.ResponseWriter, r *http.Request) error {
	id, path := r.PathValue("id"), r.PathValue("path")
	offset, err := queryInt(r, "offset", 0)
	if err != nil {
		return err
	}
	length, err := queryInt(r, "length", -1)
	if err != nil {
		return err
	}
	if length < 0 { // the rest of the file
		s.mu.Lock()
		if m := s.copies[id]; m != nil {
			if i := slices.IndexFunc(m.Files, func(f snapshotapi.File) bool { return f.Path == path }); i >= 0 {
				length = max(m.Files[i].Size-offset, 0)
			}
		}
		s.mu.Unlock()
	}
	rc, err := s.Open(id, path, offset, length)
	var re *RangeError
	switch {
	case errors.Is(err, ErrNotFound):
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no file %q in snapshot %q", path, id)
	case errors.As(err, &re):
		return service.Errorf(http.StatusRequestedRangeNotSatisfiable, service.CodeBadRequest, "%s", re.Error())
	case err != nil:
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	w.WriteHeader(http.StatusOK)
	// Once the status is sent, a failed copy can only cut the body short,
	// which the client sees by its length and hashes.
	if _, err := io.Copy(w, rc); err != nil {
		s.opts.Logger.WarnContext(r.Context(), "snapshot read cut short", "id", id, "path", path, "error", err)
	}
	return nil
}

func (s *Server) handleDrop(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := s.Drop(id); errors.Is(err, ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no snapshot %q", id)
	} else if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func queryInt(r *http.Request, name string, def int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "%s must be a whole number of bytes", name)
	}
	return n, nil
}
