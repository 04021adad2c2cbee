package backup

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"filippo.io/age"
	"golang.org/x/sync/errgroup"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/atomicfile"
)

// EnvService is the service name under which a backup holds the host's
// env files.
const EnvService = "env"

// ManifestFormat is the version of a backup's manifest.
const ManifestFormat = 1

// Manifest is a backup: what was copied, from where, and how to find each
// file's pieces.
type Manifest struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	// Target is the lucid.yaml target, or "local" for the local stack.
	Target string `json:"target"`
	Host   string `json:"host,omitempty"`
	// Version is the version of the lucidctl that took the backup; each
	// service's snapshot says its own.
	Version   string    `json:"version,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// TakenAt is when the last service's copy was taken.
	TakenAt    time.Time `json:"taken_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Services are the services' snapshots, facts included, by name.
	Services []snapshotapi.Manifest `json:"services"`
	// Env are the host's env files (secrets included), each cut into
	// pieces like the services' files.
	Env    []snapshotapi.File `json:"env,omitempty"`
	Totals Totals             `json:"totals"`
}

// Service is the snapshot of service in the backup, if it has one.
func (m *Manifest) Service(name string) (*snapshotapi.Manifest, bool) {
	for i := range m.Services {
		if m.Services[i].Service == name {
			return &m.Services[i], true
		}
	}
	return nil, false
}

// Totals are a backup's sizes.
type Totals struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// BytesSent are the bytes fetched from the services: the new pieces.
	BytesSent    int64 `json:"bytes_sent"`
	Pieces       int   `json:"pieces"`
	PiecesNew    int   `json:"pieces_new"`
	PiecesReused int   `json:"pieces_reused"`
}

// Source serves the files of one service's snapshot (snapshotapi.Client
// does).
type Source interface {
	Read(ctx context.Context, id, path string, offset, length int64) (io.ReadCloser, error)
}

var _ Source = (*snapshotapi.Client)(nil)

// Progress is reported after each piece.
type Progress struct {
	Service     string
	PiecesDone  int
	PiecesTotal int
	// BlobsWritten counts the blobs this backup wrote so far.
	BlobsWritten int
	BytesSent    int64
}

// BeginOptions describe a backup about to be taken.
type BeginOptions struct {
	Target, Host, Version string
	// Recipients encrypt the backup; none for a plaintext repository.
	Recipients []age.Recipient
	// Parallel is how many pieces are fetched at once (default 4).
	Parallel int
	// Progress, if set, is called after each piece (from several
	// goroutines, one call at a time).
	Progress func(Progress)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Signer, if set, signs the backup's manifest (SigningKey).
	Signer ed25519.PrivateKey
}

// Writer takes one backup into a repository.
type Writer struct {
	repo *Repository
	opts BeginOptions
	m    Manifest

	mu      sync.Mutex
	claimed map[string]bool // pieces this backup stored or found
	written int
}

// Begin starts a backup: its partial marker is written at once, so that a
// backup that never finishes is recognisable.
func (r *Repository) Begin(ctx context.Context, opts BeginOptions) (*Writer, error) {
	if r.marker.Encrypted && len(opts.Recipients) == 0 {
		return nil, fmt.Errorf("%s is an encrypted repository and no recipient was given: %w", r.dir, ErrMixed)
	}
	if !r.marker.Encrypted && len(opts.Recipients) > 0 {
		return nil, fmt.Errorf("%s is a plaintext repository and recipients were given: %w", r.dir, ErrMixed)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Target == "" {
		opts.Target = "local"
	}
	now := opts.Now().UTC()
	id, err := newID(now)
	if err != nil {
		return nil, err
	}
	w := &Writer{repo: r, opts: opts, claimed: map[string]bool{},
		m: Manifest{Format: ManifestFormat, ID: id, Target: opts.Target, Host: opts.Host, Version: opts.Version, StartedAt: now}}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := w.writeInfo(partialSuffix); err != nil {
		return nil, fmt.Errorf("start backup %s: %w", id, err)
	}
	return w, nil
}

// ID is the backup's id.
func (w *Writer) ID() string { return w.m.ID }

func (w *Writer) writeInfo(suffix string) error {
	info := Info{ID: w.m.ID, Target: w.m.Target, Host: w.m.Host, StartedAt: w.m.StartedAt, Partial: suffix == partialSuffix}
	if suffix != partialSuffix {
		info.FinishedAt, info.Totals = w.m.FinishedAt, &w.m.Totals
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(w.repo.dir, backupsDir, w.m.ID+suffix), append(b, '\n'), 0o600)
}

type pieceTask struct {
	file   *snapshotapi.File
	sum    string
	offset int64
	length int64
}

// AddService copies one service's snapshot into the backup: every piece
// not in the repository yet is read from src, checked against its hash,
// and stored.
func (w *Writer) AddService(ctx context.Context, m *snapshotapi.Manifest, src Source) error {
	if m.PieceSize <= 0 || m.PieceSize > maxPieceBytes {
		return fmt.Errorf("%s: snapshot %s has piece size %d, not 1..%d", m.Service, m.ID, m.PieceSize, maxPieceBytes)
	}
	var tasks []pieceTask
	for i := range m.Files {
		f := &m.Files[i]
		if err := checkFile(f, m.PieceSize); err != nil {
			return fmt.Errorf("%s: snapshot %s: %w", m.Service, m.ID, err)
		}
		for j, sum := range f.Pieces {
			off := int64(j) * m.PieceSize
			tasks = append(tasks, pieceTask{file: f, sum: sum, offset: off, length: min(m.PieceSize, f.Size-off)})
		}
		w.count(f)
	}
	done := 0
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.opts.Parallel)
	for _, t := range tasks {
		g.Go(func() error {
			sent, err := w.piece(gctx, t, func(ctx context.Context) ([]byte, error) {
				rc, err := src.Read(ctx, m.ID, t.file.Path, t.offset, t.length)
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				buf := make([]byte, t.length)
				if _, err := io.ReadFull(rc, buf); err != nil {
					return nil, fmt.Errorf("read %s at %d of snapshot %s: %w", t.file.Path, t.offset, m.ID, err)
				}
				return buf, nil
			})
			if err != nil {
				return fmt.Errorf("%s: %w", m.Service, err)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			done++
			w.m.Totals.BytesSent += sent
			if w.opts.Progress != nil {
				w.opts.Progress(Progress{Service: m.Service, PiecesDone: done, PiecesTotal: len(tasks), BlobsWritten: w.written, BytesSent: w.m.Totals.BytesSent})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m.Services = append(w.m.Services, *m)
	if m.TakenAt.After(w.m.TakenAt) {
		w.m.TakenAt = m.TakenAt
	}
	return nil
}

// AddEnvFile puts one of the host's env files into the backup.
func (w *Writer) AddEnvFile(ctx context.Context, name string, mode uint32, data []byte) error {
	f := snapshotapi.File{Path: name, Size: int64(len(data)), Mode: mode, SHA256: sha256Hex(data)}
	for off := int64(0); off < f.Size; off += snapshotapi.PieceSize {
		f.Pieces = append(f.Pieces, sha256Hex(data[off:min(off+snapshotapi.PieceSize, f.Size)]))
	}
	w.count(&f)
	for j, sum := range f.Pieces {
		off := int64(j) * snapshotapi.PieceSize
		piece := data[off:min(off+snapshotapi.PieceSize, f.Size)]
		if _, err := w.piece(ctx, pieceTask{file: &f, sum: sum, offset: off, length: int64(len(piece))},
			func(context.Context) ([]byte, error) { return piece, nil }); err != nil {
			return fmt.Errorf("env file %s: %w", name, err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m.Env = append(w.m.Env, f)
	return nil
}

func (w *Writer) count(f *snapshotapi.File) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m.Totals.Files++
	w.m.Totals.Bytes += f.Size
	w.m.Totals.Pieces += len(f.Pieces)
}

// checkFile refuses a manifest entry whose pieces cannot be its size, or
// whose names could escape the blob directory.
func checkFile(f *snapshotapi.File, pieceSize int64) error {
	want := (f.Size + pieceSize - 1) / pieceSize
	if int64(len(f.Pieces)) != want {
		return fmt.Errorf("%s: %d bytes in %d piece(s), want %d", f.Path, f.Size, len(f.Pieces), want)
	}
	if !validSum(f.SHA256) {
		return fmt.Errorf("%s: bad file hash %q", f.Path, f.SHA256)
	}
	for _, s := range f.Pieces {
		if !validSum(s) {
			return fmt.Errorf("%s: bad piece hash %q", f.Path, s)
		}
	}
	return nil
}

// piece makes sure the blob of t is in the repository, fetching it only
// when it is not; it returns the bytes fetched.
func (w *Writer) piece(ctx context.Context, t pieceTask, fetch func(context.Context) ([]byte, error)) (int64, error) {
	w.mu.Lock()
	if w.claimed[t.sum] {
		w.m.Totals.PiecesReused++
		w.mu.Unlock()
		return 0, nil
	}
	w.claimed[t.sum] = true
	w.mu.Unlock()
	path := w.repo.blobPath(t.sum)
	if fi, err := os.Stat(path); err == nil && w.plausible(fi.Size(), t.length) {
		w.mu.Lock()
		w.m.Totals.PiecesReused++
		w.mu.Unlock()
		return 0, nil
	}
	// Missing, or of a size no blob of this piece has (cut short on a
	// damaged disk): fetched again and written over, rather than named by
	// one backup after another that none could restore.
	data, err := fetch(ctx)
	if err != nil {
		return 0, err
	}
	if got := sha256Hex(data); got != t.sum {
		return 0, fmt.Errorf("%s at %d: the service sent a piece of SHA-256 %s, its manifest says %s", t.file.Path, t.offset, got, t.sum)
	}
	if err := w.storeBlob(path, data); err != nil {
		return 0, fmt.Errorf("store piece %s: %w", t.sum, err)
	}
	w.mu.Lock()
	w.m.Totals.PiecesNew++
	w.written++
	w.mu.Unlock()
	return int64(len(data)), nil
}

// plausible reports whether a blob of size bytes can hold a piece of
// length bytes: the same in a plaintext repository; with age's header
// (a few hundred bytes a recipient) and a 16-byte tag every 64 KiB in an
// encrypted one. A blob damaged in place, at its size, is found only by
// backup verify.
func (w *Writer) plausible(size, length int64) bool {
	if !w.repo.marker.Encrypted {
		return size == length
	}
	tags := (length/(64<<10) + 1) * 16
	return size >= length+tags && size <= length+tags+64<<10
}

func (w *Writer) storeBlob(path string, data []byte) error {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// A new fan-out directory: its own entry in blobs/ must be on disk
		// before a manifest names a piece in it.
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := atomicfile.SyncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return atomicfile.WriteFunc(path, 0o600, func(f *os.File) error { return w.seal(f, data) })
}

// seal writes data to dst, encrypted for the recipients in an encrypted
// repository.
func (w *Writer) seal(dst io.Writer, data []byte) error {
	if !w.repo.marker.Encrypted {
		_, err := dst.Write(data)
		return err
	}
	enc, err := age.Encrypt(dst, w.opts.Recipients...)
	if err != nil {
		return err
	}
	if _, err := enc.Write(data); err != nil {
		return err
	}
	return enc.Close()
}

// Commit writes the backup's manifest, which makes the backup exist, then
// its plaintext summary in place of the partial marker.
func (w *Writer) Commit(ctx context.Context) (*Manifest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m.FinishedAt = w.opts.Now().UTC()
	if w.m.TakenAt.IsZero() {
		w.m.TakenAt = w.m.StartedAt
	}
	b, err := json.MarshalIndent(&w.m, "", "  ")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := w.seal(&buf, b); err != nil {
		return nil, err
	}
	if buf.Len() > maxManifestBytes {
		// Load would refuse it: a backup nobody could restore must not
		// look complete.
		return nil, fmt.Errorf("backup %s: its manifest takes %d bytes, more than a manifest may (%d): the data is too large for one backup", w.m.ID, buf.Len(), maxManifestBytes)
	}
	if w.opts.Signer != nil {
		// Before the manifest, which makes the backup exist: a complete
		// backup is never without its signature.
		if err := w.repo.sign(w.m.ID, buf.Bytes(), w.opts.Signer); err != nil {
			return nil, fmt.Errorf("sign backup %s: %w", w.m.ID, err)
		}
	}
	if err := atomicfile.Write(filepath.Join(w.repo.dir, backupsDir, w.m.ID+w.repo.manifestSuffix()), buf.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("write the manifest of backup %s: %w", w.m.ID, err)
	}
	// The backup exists now; the summary only spares listing a decryption.
	if err := w.writeInfo(infoSuffix); err != nil {
		return nil, fmt.Errorf("backup %s is complete, but its summary: %w", w.m.ID, err)
	}
	if err := os.Remove(filepath.Join(w.repo.dir, backupsDir, w.m.ID+partialSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("backup %s is complete, but its partial marker: %w", w.m.ID, err)
	}
	m := w.m
	return &m, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Snapshotter is one service's snapshot endpoints (snapshotapi.Client).
type Snapshotter interface {
	Source
	Take(ctx context.Context) (*snapshotapi.Manifest, error)
	Drop(ctx context.Context, id string) error
}

var _ Snapshotter = (*snapshotapi.Client)(nil)

// EnvFile is one of the host's env files.
type EnvFile struct {
	Name string
	Mode uint32
	Data []byte
}

// Events are the callbacks Backup tells of its steps; each may be nil.
type Events struct {
	// Taken: a service's copy was taken.
	Taken func(m *snapshotapi.Manifest)
	// DropFailed: a service's copy could not be dropped (it expires by
	// itself after snapshotapi.MaxAge); the backup stands.
	DropFailed func(service string, err error)
}

// Backup takes one backup of services and env: every service's copy is
// taken first, one after the other in the order given, so that the
// copies are as close in time as they can be; then the pieces the
// repository lacks are fetched; then the manifest is written. The
// services' copies are dropped at the end, whether the backup succeeded
// or not.
func (r *Repository) Backup(ctx context.Context, opts BeginOptions, services []Snapshotter, env []EnvFile, ev Events) (*Manifest, error) {
	w, err := r.Begin(ctx, opts)
	if err != nil {
		return nil, err
	}
	var copies []takenCopy
	defer func() {
		// Dropped even when ctx is done: the copies hold disk on the host.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, c := range copies {
			if err := c.src.Drop(dctx, c.m.ID); err != nil && ev.DropFailed != nil {
				ev.DropFailed(c.m.Service, err)
			}
		}
	}()
	for _, s := range services {
		m, err := s.Take(ctx)
		if err != nil {
			return nil, err
		}
		copies = append(copies, takenCopy{s, m})
		if ev.Taken != nil {
			ev.Taken(m)
		}
	}
	stopTouching := keepCopies(ctx, copies, snapshotapi.MaxAge/4)
	defer stopTouching()
	for _, c := range copies {
		if err := w.AddService(ctx, c.m, c.src); err != nil {
			return nil, err
		}
	}
	for _, e := range env {
		if err := w.AddEnvFile(ctx, e.Name, e.Mode, e.Data); err != nil {
			return nil, err
		}
	}
	return w.Commit(ctx)
}

// takenCopy is a service's copy a backup took, and where to read it.
type takenCopy struct {
	src Snapshotter
	m   *snapshotapi.Manifest
}

// keepCopies reads a byte of each copy at every tick of every, until the
// returned stop is called. A service drops a copy nobody took or read from for
// snapshotapi.MaxAge, and the copies of one backup are taken together
// and transferred one after the other: behind a first transfer of tens of
// GiB from an SD card, the last copies would expire before their turn.
func keepCopies(ctx context.Context, copies []takenCopy, every time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, c := range copies {
				if len(c.m.Files) == 0 {
					continue
				}
				// A failed read is the transfer's to report, when its
				// turn comes.
				if rc, err := c.src.Read(ctx, c.m.ID, c.m.Files[0].Path, 0, 1); err == nil {
					_, _ = io.Copy(io.Discard, rc)
					_ = rc.Close()
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
