// Package backup is the operator's backup repository: a directory on the
// operator's machine holding the online backups of a Lucid stack, taken
// through the services' snapshot contract (pkg/api/snapshotapi).
//
// Layout of a repository DIR:
//
//	DIR/lucid-backup.json          the marker: format, version, encrypted or
//	                               plaintext (no secrets)
//	DIR/blobs/ab/<sha256>          one piece of a file each, named by the
//	                               SHA-256 of its plaintext, age-encrypted
//	                               (plain in a plaintext repository)
//	DIR/backups/<id>.partial       written first (who, when, which target),
//	                               renamed to <id>.info.json at the end
//	DIR/backups/<id>.age           the backup's manifest, age-encrypted
//	                               (<id>.json in a plaintext repository),
//	                               written last: the backup exists only once
//	                               this file does
//	DIR/backups/<id>.info.json     the plaintext summary of a complete backup
//	                               (id, target, host, times, totals), so that
//	                               listing needs no identity
//
// Every file is written to a temporary name, fsynced, renamed into place,
// and its directory fsynced: a backup killed at any moment leaves earlier
// backups intact, its own blobs complete (the next backup reuses them),
// and itself listed as partial, never as the latest.
//
// Incremental: files are cut into snapshotapi.PieceSize pieces at fixed
// offsets, and a piece whose blob is already in the repository is not
// fetched again. Sealed pack files, old blocks and unchanged bbolt pages
// therefore cost nothing on the next backup.
//
// Encryption: each blob and each manifest is a separate age file for the
// repository's recipients (X25519 and ssh-ed25519/ssh-rsa keys). Blobs
// are named by the SHA-256 of their plaintext, which reveals to whoever
// reads the directory which pieces are equal (within and across backups)
// and their sizes, never their contents. That is what makes the backups
// incremental without the operator's identity on hand at backup time, and
// a piece's hash reveals its contents only to someone who could already
// guess them exactly (a chunk is already ciphertext; a database page of
// 1 MiB is not guessable). A repository is either encrypted or plaintext,
// never both: mixing would leave secrets in the clear next to blobs that
// look protected.
package backup

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// Format names the repository format in its marker.
const Format = "lucid-backup"

// Version is the repository format's version.
const Version = 1

const (
	markerName    = "lucid-backup.json"
	blobsDir      = "blobs"
	backupsDir    = "backups"
	partialSuffix = ".partial"
	infoSuffix    = ".info.json"
	ageSuffix     = ".age"
	plainSuffix   = ".json"
)

// Errors a caller may tell apart.
var (
	// ErrNotRepository: the directory holds no repository marker.
	ErrNotRepository = errors.New("not a lucid backup repository")
	// ErrMixed: an encrypted backup into a plaintext repository, or the
	// other way round.
	ErrMixed = errors.New("a repository is either encrypted or plaintext, never both")
	// ErrNoBackup: the repository holds no complete backup (by that id).
	ErrNoBackup = errors.New("no such backup")
	// ErrWrongIdentity: none of the identities opens the backup.
	ErrWrongIdentity = errors.New("none of the identities can decrypt this backup")
	// ErrCorrupt: a blob does not hold what the manifest says.
	ErrCorrupt = errors.New("corrupt backup data")
)

// Marker is the content of lucid-backup.json.
type Marker struct {
	Format    string    `json:"format"`
	Version   int       `json:"version"`
	Encrypted bool      `json:"encrypted"`
	CreatedAt time.Time `json:"created_at"`
}

// Repository is a backup directory.
type Repository struct {
	dir    string
	marker Marker
	// trusted are the keys whose signatures the repository takes
	// (Trust); none: every backup.
	trusted []ed25519.PublicKey
	// preferred are the keys whose backups Latest takes first when the
	// repository trusts none (Prefer).
	preferred []ed25519.PublicKey
}

// OpenRepository opens the repository in dir.
func OpenRepository(ctx context.Context, dir string) (*Repository, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := readBounded(filepath.Join(dir, markerName), 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (no %s)", dir, ErrNotRepository, markerName)
	}
	if err != nil {
		return nil, err
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, markerName), err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("%s: %w (format %q)", dir, ErrNotRepository, m.Format)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("%s: repository format version %d, this lucidctl reads version %d", dir, m.Version, Version)
	}
	return &Repository{dir: dir, marker: m}, nil
}

// InitRepository opens the repository in dir, creating it (and dir) when
// there is none. An existing repository of the other kind (encrypted or
// plaintext) is refused with ErrMixed.
func InitRepository(ctx context.Context, dir string, encrypted bool) (*Repository, error) {
	r, err := OpenRepository(ctx, dir)
	switch {
	case err == nil:
		if r.marker.Encrypted != encrypted {
			return nil, fmt.Errorf("%s is %s: %w", dir, r.kind(), ErrMixed)
		}
		return r, nil
	case !errors.Is(err, ErrNotRepository):
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for _, d := range []string{blobsDir, backupsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	m := Marker{Format: Format, Version: Version, Encrypted: encrypted, CreatedAt: time.Now().UTC()}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, markerName), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return &Repository{dir: dir, marker: m}, nil
}

// Dir is the repository's directory.
func (r *Repository) Dir() string { return r.dir }

// Encrypted says whether the repository's blobs and manifests are
// age-encrypted.
func (r *Repository) Encrypted() bool { return r.marker.Encrypted }

func (r *Repository) kind() string {
	if r.marker.Encrypted {
		return "an encrypted repository"
	}
	return "a plaintext repository"
}

// Info is what the repository tells of a backup without decrypting it.
type Info struct {
	ID     string `json:"id"`
	Target string `json:"target,omitempty"`
	Host   string `json:"host,omitempty"`
	// Partial: the backup never completed (killed, or failed): it cannot
	// be restored, but its blobs serve the next backup.
	Partial    bool      `json:"partial"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Totals     *Totals   `json:"totals,omitempty"`
	// Signature is what the backup's signature is worth to the
	// repository, with the keys it trusts (Trust): set by SignatureOf,
	// which reads the manifest, never by Backups.
	Signature Signature `json:"signature,omitempty"`
}

// Backups lists the repository's backups by id, oldest first, so the
// newest complete one is the last not marked Partial.
func (r *Repository) Backups(ctx context.Context) ([]Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(r.dir, backupsDir))
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	seen := map[string]bool{}
	var out []Info
	for _, e := range entries {
		id, ok := idOf(e.Name())
		if !ok || seen[id] {
			continue
		}
		seen[id] = true
		complete := names[id+r.manifestSuffix()]
		var info Info
		var err error
		switch {
		case complete && names[id+infoSuffix]:
			info, err = readInfo(filepath.Join(r.dir, backupsDir, id+infoSuffix))
		case names[id+partialSuffix]:
			info, err = readInfo(filepath.Join(r.dir, backupsDir, id+partialSuffix))
		default:
			info = Info{ID: id}
		}
		if err != nil {
			// A torn summary must not hide the backup: the id says when.
			info = Info{ID: id}
		}
		info.ID, info.Partial, info.Signature = id, !complete, ""
		if info.Partial {
			info.FinishedAt, info.Totals = time.Time{}, nil
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Latest is the newest complete backup (of those a trusted key signed,
// when the repository trusts any).
func (r *Repository) Latest(ctx context.Context) (Info, error) {
	return r.LatestOf(ctx, "")
}

// LatestOf is Latest among the backups of target (Info.Target) alone, or
// of any target when target is "". One repository may hold the backups
// of several hosts (a cluster's, the local stack's): a restore onto one
// of them must not take another's newest. Info comes from a backup's
// plaintext summary, which nobody signs: the caller checks the target of
// the manifest it loads (Manifest.Target).
func (r *Repository) LatestOf(ctx context.Context, target string) (Info, error) {
	all, err := r.Backups(ctx)
	if err != nil {
		return Info{}, err
	}
	of := ""
	if target != "" {
		of = " of " + target
	}
	complete := 0 // of target
	prefer := len(r.trusted) == 0 && len(r.preferred) > 0
	var newest *Info // of any signature, when prefer
	for i := len(all) - 1; i >= 0; i-- {
		// A summary that does not say its target (torn, or lost) does
		// not hide its backup: the caller holds the signed manifest's
		// target against the one it asked for.
		if all[i].Partial || target != "" && all[i].Target != "" && all[i].Target != target {
			continue
		}
		complete++
		if len(r.trusted) > 0 && r.SignatureOf(all[i].ID) != SignatureTrusted {
			// One no trusted key signed is not the operator's: the
			// newest is the newest that is.
			continue
		}
		if prefer {
			if newest == nil {
				newest = &all[i]
			}
			if r.signatureWith(r.preferred, all[i].ID) != SignatureTrusted {
				continue
			}
		}
		return all[i], nil
	}
	if newest != nil {
		return *newest, nil // none of the preferred keys' at all
	}
	if complete > 0 && len(r.trusted) > 0 {
		return Info{}, fmt.Errorf("%s: no complete backup%s there is signed by a trusted key: %w", r.dir, of, ErrUnsigned)
	}
	return Info{}, fmt.Errorf("%s: %w%s", r.dir, ErrNoBackup, of)
}

func (r *Repository) manifestSuffix() string {
	if r.marker.Encrypted {
		return ageSuffix
	}
	return plainSuffix
}

// idOf is the backup id of a file in backups/, if it is one of a backup's.
func idOf(name string) (string, bool) {
	for _, s := range []string{infoSuffix, partialSuffix, ageSuffix, plainSuffix} {
		if id, ok := strings.CutSuffix(name, s); ok && validID(id) {
			return id, true
		}
	}
	return "", false
}

func readInfo(path string) (Info, error) {
	b, err := readBounded(path, 1<<20)
	if err != nil {
		return Info{}, err
	}
	var i Info
	if err := json.Unmarshal(b, &i); err != nil {
		return Info{}, err
	}
	return i, nil
}

// idLayout makes ids sort by time.
const idLayout = "20060102T150405.000000Z"

// newID is a time-sortable backup id: UTC time to the microsecond, then random
// hex so that two backups at one instant differ.
func newID(now time.Time) (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return now.UTC().Format(idLayout) + "-" + hex.EncodeToString(b[:]), nil
}

func validID(id string) bool {
	ts, suffix, ok := strings.Cut(id, "-")
	if !ok || len(suffix) != 6 {
		return false
	}
	if _, err := hex.DecodeString(suffix); err != nil {
		return false
	}
	_, err := time.Parse(idLayout, ts)
	return err == nil
}

// blobPath is where the piece with hex SHA-256 sum lives.
func (r *Repository) blobPath(sum string) string {
	return filepath.Join(r.dir, blobsDir, sum[:2], sum)
}

func validSum(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}
