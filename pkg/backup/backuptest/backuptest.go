// Package backuptest is a test fixture for backups: an in-memory service
// that implements the snapshot contract of pkg/api/snapshotapi faithfully
// (take a copy, serve byte ranges of its files, drop it), behind the
// operator token, so that backups are tested without running the stack.
package backuptest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/auth"
)

// Service is a fake stateful service: its files live in memory and a
// snapshot copies them. It is an http.Handler.
type Service struct {
	Name string
	// Token, if set, is the operator token whose credential for this
	// service on Host (auth.OperatorCredential) every call must carry, as
	// a deployed service's hash says.
	Token string
	// Host is the host the service runs on, lucid.yaml's name for it
	// ("": auth.LocalHost, the local stack).
	Host string
	// Facts go into every manifest.
	Facts snapshotapi.Facts
	// OnRead, if set, is called before each file read is served, with
	// the number of reads so far; it may block (to hold a backup
	// mid-transfer) until the request's context ends.
	OnRead func(r *http.Request, n int)

	mu      sync.Mutex
	files   map[string][]byte
	copies  map[string]map[string][]byte
	next    int
	reads   int
	bytes   int64
	dropped []string
}

// NewService returns a service named name holding files (path → content).
func NewService(name string, files map[string][]byte) *Service {
	s := &Service{Name: name, files: map[string][]byte{}, copies: map[string]map[string][]byte{}}
	for p, b := range files {
		s.files[p] = slices.Clone(b)
	}
	return s
}

// host is the host the service runs on.
func (s *Service) host() string {
	if s.Host == "" {
		return auth.LocalHost
	}
	return s.Host
}

// Set replaces (or adds) one file of the live state.
func (s *Service) Set(path string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = slices.Clone(b)
}

// Reads is the number of file reads served, and the bytes they sent.
func (s *Service) Reads() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads, s.bytes
}

// Live is the number of copies taken and not dropped.
func (s *Service) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.copies)
}

// Dropped are the ids of the copies dropped so far.
func (s *Service) Dropped() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.dropped)
}

func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.Token != "" && r.Header.Get("Authorization") != "Bearer "+auth.OperatorCredential(s.Token, s.Name, s.host()) {
		writeError(w, http.StatusUnauthorized, "the operator credential is required")
		return
	}
	const prefix = "/api/v1/snapshots"
	rest, ok := strings.CutPrefix(r.URL.Path, prefix)
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, "no such endpoint")
	case rest == "" && r.Method == http.MethodPost:
		s.take(w)
	case strings.Contains(rest, "/files/") && r.Method == http.MethodGet:
		id, path, _ := strings.Cut(strings.TrimPrefix(rest, "/"), "/files/")
		s.read(w, r, id, path)
	case r.Method == http.MethodDelete:
		s.drop(w, strings.TrimPrefix(rest, "/"))
	default:
		writeError(w, http.StatusNotFound, "no such endpoint")
	}
}

func (s *Service) take(w http.ResponseWriter) {
	s.mu.Lock()
	s.next++
	id := fmt.Sprintf("%s-%d", s.Name, s.next)
	// Set replaces a file's slice and never writes into one, so a copy
	// shares the bytes: a 256 MiB fixture is not held twice.
	snap := maps.Clone(s.files)
	s.copies[id] = snap
	s.mu.Unlock()
	m := Manifest(s.Name, id, snap)
	m.Facts = s.Facts
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(m)
}

// Manifest describes files (path → content) as a service's copy id.
func Manifest(service, id string, files map[string][]byte) *snapshotapi.Manifest {
	m := &snapshotapi.Manifest{ID: id, Service: service, TakenAt: time.Now().UTC(), Version: "test", PieceSize: snapshotapi.PieceSize}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		b := files[p]
		f := snapshotapi.File{Path: p, Size: int64(len(b)), Mode: 0o600, SHA256: sum(b)}
		for off := 0; off < len(b); off += snapshotapi.PieceSize {
			f.Pieces = append(f.Pieces, sum(b[off:min(off+snapshotapi.PieceSize, len(b))]))
		}
		m.Files = append(m.Files, f)
	}
	return m
}

func (s *Service) read(w http.ResponseWriter, r *http.Request, id, path string) {
	s.mu.Lock()
	s.reads++
	n := s.reads
	snap, ok := s.copies[id]
	b, fok := snap[path]
	s.mu.Unlock()
	if s.OnRead != nil {
		s.OnRead(r, n)
	}
	if !ok || !fok {
		writeError(w, http.StatusNotFound, "no such snapshot or file")
		return
	}
	off, err1 := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	length, err2 := strconv.ParseInt(r.URL.Query().Get("length"), 10, 64)
	if err1 != nil || err2 != nil || off < 0 || length < 0 || off+length > int64(len(b)) {
		writeError(w, http.StatusBadRequest, "bad range")
		return
	}
	s.mu.Lock()
	s.bytes += length
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	_, _ = w.Write(b[off : off+length])
}

func (s *Service) drop(w http.ResponseWriter, id string) {
	s.mu.Lock()
	_, ok := s.copies[id]
	delete(s.copies, id)
	if ok {
		s.dropped = append(s.dropped, id)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "no such snapshot")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "LUCID_ERR_" + strconv.Itoa(status), "message": msg}})
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
