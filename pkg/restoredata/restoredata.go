// Package restoredata replaces a service's data directory with the files
// of a backup. Both ways a restore reaches a data directory use it: lucidctl
// in-process for the local stack, and `lucid data restore` inside a one-shot
// container of the service's own image on a Pi (whose images have no shell
// and no tar).
//
// The files travel as a tar stream whose first entry is the manifest
// (ManifestName): the files the directory must hold, each with its size,
// mode and SHA-256. Replace stages every file under the directory, checks
// each against the manifest, and only when all of them are whole swaps
// them in and removes everything else, so a stream cut short or a file
// that does not match leaves the directory as it was.
package restoredata

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/atomicfile"
)

// ManifestName is the first entry of a restore stream: a JSON Manifest.
const ManifestName = ".lucid-restore.json"

// stagingPrefix names the folder, inside the data directory, that holds
// the staged files until they are all checked. It sits on the same file
// system as their final place, so each swap is a rename.
const stagingPrefix = ".lucid-restore-"

// IncompleteName marks a data directory whose files a restore began to
// replace and has not finished with: a power cut between the first removal
// and the last rename leaves a mix of the old files and the backup's. The
// services refuse to start on such a directory (Incomplete); running the
// restore again finishes it. It shares stagingPrefix, so no restored file
// can be called that.
const IncompleteName = stagingPrefix + "incomplete"

// ErrIncomplete is a data directory a restore did not finish replacing.
var ErrIncomplete = errors.New("a restore began replacing the files of this data directory and did not finish")

// Incomplete returns an error wrapping ErrIncomplete when a restore into
// dir did not finish, nil when none is under way.
func Incomplete(dir string) error {
	_, err := os.Lstat(filepath.Join(dir, IncompleteName))
	switch {
	case err == nil:
		return fmt.Errorf("%s: %w (the host stopped halfway?): run the restore again; nothing starts on half-replaced data", dir, ErrIncomplete)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("%s: %w", dir, err)
	}
}

// maxManifest bounds the manifest entry.
const maxManifest = 16 << 20

// Manifest is what a data directory must hold after the restore.
type Manifest struct {
	// Service names whose data this is, for messages.
	Service string             `json:"service,omitempty"`
	Files   []snapshotapi.File `json:"files"`
}

// Result is what Replace did.
type Result struct {
	Files   int   `json:"files"`
	Bytes   int64 `json:"bytes"`
	Removed int   `json:"removed"`
}

// Errors a caller can tell apart.
var (
	// ErrUnsafePath is a path that is absolute, climbs out of the
	// directory, or is not clean.
	ErrUnsafePath = errors.New("unsafe path")
	// ErrMismatch is a file whose bytes are not the manifest's.
	ErrMismatch = errors.New("file does not match the manifest")
	// ErrStream is a stream that is not a restore stream.
	ErrStream = errors.New("not a restore stream")
	// ErrUnchanged marks a Replace that failed before it touched the
	// directory: it holds what it held.
	ErrUnchanged = errors.New("the data directory is as it was")
)

// ExitUnchanged is `lucid data restore`'s exit code for a failure with
// the directory as it was (ErrUnchanged), told apart from one that may
// have left it half replaced, which a caller must not start a service on.
const ExitUnchanged = 3

// CheckPath refuses a path that could land outside the data directory, or
// in the places a restore never writes (its own staging folder).
func CheckPath(p string) error {
	switch {
	case p == "" || p == "." || strings.HasPrefix(p, "/") || strings.Contains(p, `\`):
		return fmt.Errorf("%w %q", ErrUnsafePath, p)
	case path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("%w %q", ErrUnsafePath, p)
	case strings.HasPrefix(p, stagingPrefix) || p == ManifestName:
		return fmt.Errorf("%w %q: reserved for the restore itself", ErrUnsafePath, p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." || part == "" {
			return fmt.Errorf("%w %q", ErrUnsafePath, p)
		}
	}
	return nil
}

// Check validates a manifest as Replace does before it stages a file:
// safe unique paths, each with a SHA-256, no file that is also a
// folder of another.
func (m *Manifest) Check() error {
	seen := map[string]bool{}
	for _, f := range m.Files {
		if err := CheckPath(f.Path); err != nil {
			return err
		}
		if seen[f.Path] {
			return fmt.Errorf("%w: %q twice in the manifest", ErrStream, f.Path)
		}
		seen[f.Path] = true
		if len(f.SHA256) != 64 {
			return fmt.Errorf("%w: %q has no SHA-256", ErrStream, f.Path)
		}
		if f.Size < 0 {
			return fmt.Errorf("%w: %q has a negative size", ErrStream, f.Path)
		}
	}
	for p := range seen {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if seen[d] {
				return fmt.Errorf("%w: %q is both a file and a folder", ErrStream, d)
			}
		}
	}
	return nil
}

// fileMode is the mode a restored file gets: the manifest's owner bits,
// never more than 0700, at least readable and writable by its owner.
func fileMode(m uint32) os.FileMode {
	mode := os.FileMode(m) & 0o700
	return mode | 0o600
}

// WriteStream writes the restore stream of m to w: the manifest, then each
// file's bytes as open returns them, in the manifest's order. It checks
// nothing but sizes; the receiving end checks the hashes.
func WriteStream(ctx context.Context, w io.Writer, m Manifest, open func(ctx context.Context, path string) (io.ReadCloser, error)) error {
	if err := m.Check(); err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	mj, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(mj)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(mj); err != nil {
		return err
	}
	for _, f := range m.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: int64(fileMode(f.Mode)), Size: f.Size, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		rc, err := open(ctx, f.Path)
		if err != nil {
			return fmt.Errorf("open %s: %w", f.Path, err)
		}
		n, err := io.Copy(tw, io.LimitReader(rc, f.Size))
		rc.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", f.Path, err)
		}
		if n != f.Size {
			return fmt.Errorf("read %s: %w: %d of %d bytes", f.Path, ErrMismatch, n, f.Size)
		}
	}
	return tw.Close()
}

// Replace makes dir hold exactly the files of the restore stream r, each
// checked against the stream's manifest. dir must exist (a volume's mount
// point, or a folder the caller made). Nothing in dir changes until every
// file arrived whole and matched; then the files are renamed into place,
// everything else in dir is removed, and the folders are fsynced.
func Replace(ctx context.Context, dir string, r io.Reader) (_ *Result, err error) {
	touched := false // from the mark on
	defer func() {
		if err != nil && !touched {
			err = fmt.Errorf("%w; %w", err, ErrUnchanged)
		}
	}()
	// Clean, as the paths the swap compares it with are: given as
	// "data/." the staging folder would not be known for what it is.
	dir = filepath.Clean(dir)
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("data directory %s is not a folder", dir)
	}
	tr := tar.NewReader(r)
	m, err := readManifest(tr)
	if err != nil {
		return nil, err
	}
	staging, err := os.MkdirTemp(dir, stagingPrefix)
	if err != nil {
		return nil, fmt.Errorf("staging folder: %w", err)
	}
	defer func() {
		// After a swap it is empty; after a refusal it holds what was
		// staged. One left behind is removed by the next restore's swap.
		if rerr := os.RemoveAll(staging); rerr != nil && err == nil {
			err = fmt.Errorf("remove the staging folder: %w", rerr)
		}
	}()
	res := &Result{}
	want := map[string]snapshotapi.File{}
	for _, f := range m.Files {
		want[f.Path] = f
	}
	got := map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrStream, err)
		}
		if err := CheckPath(h.Name); err != nil {
			return nil, err
		}
		f, ok := want[h.Name]
		if !ok {
			return nil, fmt.Errorf("%w: %q is not in the manifest", ErrStream, h.Name)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: %q is not a regular file", ErrStream, h.Name)
		}
		if got[h.Name] {
			return nil, fmt.Errorf("%w: %q twice in the stream", ErrStream, h.Name)
		}
		if err := stage(staging, f, tr); err != nil {
			return nil, err
		}
		got[h.Name] = true
		res.Files++
		res.Bytes += f.Size
	}
	for _, f := range m.Files {
		if !got[f.Path] {
			return nil, fmt.Errorf("%w: %q is missing from the stream", ErrStream, f.Path)
		}
	}
	// From the first removal to the last rename the directory is neither
	// the old one nor the backup's: marked so, durably, until it is done.
	marker := filepath.Join(dir, IncompleteName)
	touched = true
	if err := writeSynced(marker, []byte("a restore is replacing the files of this directory\n")); err != nil {
		return nil, fmt.Errorf("mark the restore under way: %w", err)
	}
	removed, err := swap(dir, staging, m.Files)
	res.Removed = removed
	if err != nil {
		return res, fmt.Errorf("%w; the data directory is half replaced: run the restore again", err)
	}
	if err := os.Remove(marker); err != nil {
		return res, fmt.Errorf("the restore is done, but its mark stays: %w", err)
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return res, err
	}
	return res, nil
}

// writeSynced writes data to the new file p and makes it, and its entry in
// its folder, durable. Only its existence counts (a mark), so it is
// written in place: no temporary file is left in the data directory.
func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

func readManifest(tr *tar.Reader) (*Manifest, error) {
	h, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStream, err)
	}
	if h.Name != ManifestName || h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: its first entry is %q, not %s", ErrStream, h.Name, ManifestName)
	}
	if h.Size > maxManifest {
		return nil, fmt.Errorf("%w: manifest of %d bytes", ErrStream, h.Size)
	}
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(tr, maxManifest)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrStream, err)
	}
	if err := m.Check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// stage writes one file under staging and checks its size and hash.
func stage(staging string, f snapshotapi.File, r io.Reader) error {
	dst := filepath.Join(staging, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fileMode(f.Mode))
	if err != nil {
		return err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, sum), io.LimitReader(r, f.Size+1))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	if n != f.Size {
		return fmt.Errorf("%s: %w: %d bytes, the manifest says %d", f.Path, ErrMismatch, n, f.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); !strings.EqualFold(got, f.SHA256) {
		return fmt.Errorf("%s: %w: SHA-256 %s, the manifest says %s", f.Path, ErrMismatch, got, f.SHA256)
	}
	// The file's mode regardless of the umask.
	return os.Chmod(dst, fileMode(f.Mode))
}

// swap removes from dir what is not among files, renames the staged files
// into place and fsyncs every folder it changed. It returns how many
// entries it removed.
func swap(dir, staging string, files []snapshotapi.File) (int, error) {
	keep := map[string]bool{}
	dirs := map[string]bool{".": true}
	for _, f := range files {
		keep[f.Path] = true
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	removed := 0
	// Remove first: a folder where a file will go, or a file where a folder
	// will go, must be out of the way.
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			return err
		}
		for _, e := range entries {
			p := path.Join(rel, e.Name())
			if rel == "." {
				p = e.Name()
			}
			full := filepath.Join(dir, filepath.FromSlash(p))
			if full == staging || p == IncompleteName {
				continue
			}
			switch {
			case e.IsDir() && dirs[p]:
				if err := walk(p); err != nil {
					return err
				}
			case !e.IsDir() && e.Type().IsRegular() && keep[p]:
				// replaced by the rename below
			default:
				if err := os.RemoveAll(full); err != nil {
					return fmt.Errorf("remove %s: %w", p, err)
				}
				removed++
			}
		}
		return nil
	}
	if err := walk("."); err != nil {
		return removed, err
	}
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // parents first
	for _, d := range sorted {
		if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(d)), 0o700); err != nil {
			return removed, err
		}
	}
	for _, f := range files {
		src := filepath.Join(staging, filepath.FromSlash(f.Path))
		if err := os.Rename(src, filepath.Join(dir, filepath.FromSlash(f.Path))); err != nil {
			return removed, fmt.Errorf("put %s in place: %w", f.Path, err)
		}
	}
	for i := len(sorted) - 1; i >= 0; i-- {
		if err := atomicfile.SyncDir(filepath.Join(dir, filepath.FromSlash(sorted[i]))); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// FileOf describes data as a manifest entry named p, for the files a
// restore adds that no backup holds (the engine's fence).
func FileOf(p string, data []byte) snapshotapi.File {
	sum := sha256.Sum256(data)
	return snapshotapi.File{Path: p, Size: int64(len(data)), Mode: 0o600, SHA256: hex.EncodeToString(sum[:])}
}
