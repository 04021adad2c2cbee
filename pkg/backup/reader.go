package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/restoredata"
)

// Backup is a complete backup, loaded.
type Backup struct {
	Manifest
}

// Load reads and decrypts backup id's manifest.
func (r *Repository) Load(ctx context.Context, id string, identities []age.Identity) (*Backup, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !validID(id) {
		return nil, fmt.Errorf("%q: %w", id, ErrNoBackup)
	}
	raw, err := readBounded(filepath.Join(r.dir, backupsDir, id+r.manifestSuffix()), maxManifestBytes)
	if errors.Is(err, os.ErrNotExist) {
		if _, perr := os.Stat(filepath.Join(r.dir, backupsDir, id+partialSuffix)); perr == nil {
			return nil, fmt.Errorf("backup %s is partial (it never completed): %w", id, ErrNoBackup)
		}
		return nil, fmt.Errorf("backup %s: %w", id, ErrNoBackup)
	}
	if err != nil {
		return nil, err
	}
	if err := r.checkSigned(id, raw); err != nil {
		return nil, err
	}
	plain, err := r.open(raw, identities, maxManifestBytes)
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", id, err)
	}
	var b Backup
	if err := json.Unmarshal(plain, &b.Manifest); err != nil {
		return nil, fmt.Errorf("backup %s: manifest: %w: %w", id, ErrCorrupt, err)
	}
	if b.Format != ManifestFormat {
		return nil, fmt.Errorf("backup %s: manifest format %d, this lucidctl reads %d", id, b.Format, ManifestFormat)
	}
	if b.ID != id {
		return nil, fmt.Errorf("backup %s: its manifest names backup %s: %w", id, b.ID, ErrCorrupt)
	}
	return &b, nil
}

// A repository's files are read whole, so their size is checked first:
// anyone who can write to the backup disk could put a file of many GiB in
// place of a blob or a manifest.
const (
	// maxPieceBytes bounds a piece (snapshotapi.PieceSize is 1 MiB).
	maxPieceBytes = 16 << 20
	// maxBlobBytes bounds a blob: a piece and age's framing.
	maxBlobBytes = maxPieceBytes + maxPieceBytes/1024 + 64<<10
	// maxManifestBytes bounds a manifest: some 100 bytes a piece of a
	// file, a hundred GiB of data in 1 MiB pieces and then some.
	maxManifestBytes = 256 << 20
)

// readBounded reads the file at p whole, when it holds at most limit
// bytes.
func readBounded(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // read only
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than such a file holds (%d): %w", filepath.Base(p), fi.Size(), limit, ErrCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s grew past %d bytes while read: %w", filepath.Base(p), limit, ErrCorrupt)
	}
	return b, err
}

// open decrypts raw in an encrypted repository, to at most limit bytes.
func (r *Repository) open(raw []byte, identities []age.Identity, limit int64) ([]byte, error) {
	if !r.marker.Encrypted {
		return raw, nil
	}
	if len(identities) == 0 {
		return nil, errors.New("the repository is encrypted and no identity was given")
	}
	d, err := age.Decrypt(bytes.NewReader(raw), identities...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, ErrWrongIdentity
		}
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	b, err := io.ReadAll(io.LimitReader(d, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: it decrypts to more than %d bytes", ErrCorrupt, limit)
	}
	return b, nil
}

// readPiece reads, decrypts and checks the blob of sum.
func (r *Repository) readPiece(sum string, identities []age.Identity) ([]byte, error) {
	if !validSum(sum) {
		return nil, fmt.Errorf("piece %q: %w", sum, ErrCorrupt)
	}
	raw, err := readBounded(r.blobPath(sum), maxBlobBytes)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("piece %s is missing: %w", sum, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("piece %s: %w", sum, err)
	}
	data, err := r.open(raw, identities, maxPieceBytes)
	if err != nil {
		return nil, fmt.Errorf("piece %s: %w", sum, err)
	}
	if got := sha256Hex(data); got != sum {
		return nil, fmt.Errorf("piece %s holds data of SHA-256 %s: %w", sum, got, ErrCorrupt)
	}
	return data, nil
}

// File finds a file of the backup: a service's, or with EnvService one of
// the host's env files.
func (b *Backup) File(service, path string) (*snapshotapi.File, error) {
	var files []snapshotapi.File
	if service == EnvService {
		files = b.Env
	} else {
		m, ok := b.Service(service)
		if !ok {
			return nil, fmt.Errorf("backup %s holds no snapshot of %s", b.ID, service)
		}
		files = m.Files
	}
	for i := range files {
		if files[i].Path == path {
			return &files[i], nil
		}
	}
	return nil, fmt.Errorf("backup %s holds no file %s of %s", b.ID, path, service)
}

// Open reassembles a file of backup b from its pieces, checking each
// piece's hash and, at the end, the whole file's: a reader that reaches
// io.EOF has returned exactly the file that was backed up. The caller
// closes it.
func (r *Repository) Open(ctx context.Context, b *Backup, service, path string, identities []age.Identity) (io.ReadCloser, error) {
	f, err := b.File(service, path)
	if err != nil {
		return nil, err
	}
	return &fileReader{ctx: ctx, repo: r, file: f, ids: identities, sum: sha256.New()}, nil
}

type fileReader struct {
	ctx  context.Context
	repo *Repository
	file *snapshotapi.File
	ids  []age.Identity
	sum  hash.Hash

	next int    // index of the next piece
	buf  []byte // the rest of the current piece
	read int64
	err  error
}

func (f *fileReader) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	for len(f.buf) == 0 {
		if f.next == len(f.file.Pieces) {
			f.err = f.finish()
			return 0, f.err
		}
		if err := f.ctx.Err(); err != nil {
			f.err = err
			return 0, err
		}
		data, err := f.repo.readPiece(f.file.Pieces[f.next], f.ids)
		if err != nil {
			f.err = fmt.Errorf("%s: %w", f.file.Path, err)
			return 0, f.err
		}
		f.next++
		f.sum.Write(data)
		f.buf = data
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	f.read += int64(n)
	return n, nil
}

func (f *fileReader) finish() error {
	if f.read != f.file.Size {
		return fmt.Errorf("%s: reassembled %d bytes, the manifest says %d: %w", f.file.Path, f.read, f.file.Size, ErrCorrupt)
	}
	if got := hex.EncodeToString(f.sum.Sum(nil)); got != f.file.SHA256 {
		return fmt.Errorf("%s: reassembled file has SHA-256 %s, the manifest says %s: %w", f.file.Path, got, f.file.SHA256, ErrCorrupt)
	}
	return io.EOF
}

func (f *fileReader) Close() error { return nil }

// VerifyReport is what Verify found.
type VerifyReport struct {
	ID     string `json:"id"`
	Pieces int    `json:"pieces"`
	Bytes  int64  `json:"bytes"`
	// Problems name each missing or corrupt piece.
	Problems []string `json:"problems,omitempty"`
}

// Verify checks that every piece of backup id is present, decrypts, and
// holds what its name says. Problems found are in the report, and the
// error then wraps ErrCorrupt.
func (r *Repository) Verify(ctx context.Context, id string, identities []age.Identity) (*VerifyReport, error) {
	b, err := r.Load(ctx, id, identities)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{ID: id}
	seen := map[string]bool{}
	// Each piece is checked against its own hash as it is read, and each
	// file's pieces, in order, against the file's size and hash, as a
	// restore checks them: a manifest whose pieces do not make its file
	// would otherwise pass here and fail a restore halfway.
	check := func(where string, f *snapshotapi.File) error {
		whole, size, broken := sha256.New(), int64(0), false
		for _, sum := range f.Pieces {
			if err := ctx.Err(); err != nil {
				return err
			}
			data, err := r.readPiece(sum, identities)
			if err != nil {
				broken = true
				if !seen[sum] {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: %v", where, f.Path, err))
				}
				seen[sum] = true
				continue
			}
			if !seen[sum] {
				seen[sum] = true
				rep.Pieces++
				rep.Bytes += int64(len(data))
			}
			whole.Write(data)
			size += int64(len(data))
		}
		switch {
		case broken:
		case size != f.Size:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: its pieces hold %d bytes, its manifest says %d", where, f.Path, size, f.Size))
		case hex.EncodeToString(whole.Sum(nil)) != f.SHA256:
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s %s: its pieces do not make the file its manifest names (SHA-256 differs)", where, f.Path))
		}
		return nil
	}
	for _, s := range b.Services {
		// The manifest as the restore container will refuse it, after
		// the stack stopped: a path it may not write, a file twice, no
		// SHA-256.
		m := restoredata.Manifest{Service: s.Service, Files: s.Files}
		if err := m.Check(); err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: %v", s.Service, err))
		}
		for i := range s.Files {
			if err := check(s.Service, &s.Files[i]); err != nil {
				return rep, err
			}
		}
	}
	for i := range b.Env {
		if err := check(EnvService, &b.Env[i]); err != nil {
			return rep, err
		}
	}
	if len(rep.Problems) > 0 {
		return rep, fmt.Errorf("backup %s: %d problem(s): %w", id, len(rep.Problems), ErrCorrupt)
	}
	return rep, nil
}

// ParseRecipient parses one recipient as lucid.yaml's backup.recipients
// holds them: an age X25519 key (age1...) or an SSH public key
// (ssh-ed25519 ..., ssh-rsa ...).
func ParseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "ssh-") {
		r, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("ssh recipient: %w", err)
		}
		return r, nil
	}
	rs, err := age.ParseRecipients(strings.NewReader(s))
	if err != nil {
		return nil, err
	}
	if len(rs) != 1 {
		return nil, fmt.Errorf("%d recipients in one entry", len(rs))
	}
	return rs[0], nil
}

// ReadIdentities reads the identities of an age identity file (age-keygen's
// output) or an unencrypted SSH private key. A leading ~/ is the user's
// home directory, as lucid.yaml's backup.identity may say.
func ReadIdentities(path string) ([]age.Identity, error) {
	if rest, ok := strings.CutPrefix(path, "~/"); ok {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, err
		}
		path = filepath.Join(home, rest)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if bytes.Contains(b, []byte("PRIVATE KEY")) {
		id, err := agessh.ParseIdentity(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return []age.Identity{id}, nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ids, nil
}
