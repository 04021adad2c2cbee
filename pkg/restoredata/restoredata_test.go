package restoredata_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/restoredata"
)

// stream is the restore stream of files (path → content).
func stream(t *testing.T, files map[string]string) (*bytes.Buffer, restoredata.Manifest) {
	t.Helper()
	m := restoredata.Manifest{Service: "engine"}
	for p, c := range files {
		m.Files = append(m.Files, restoredata.FileOf(p, []byte(c)))
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Path < m.Files[j].Path })
	var buf bytes.Buffer
	err := restoredata.WriteStream(context.Background(), &buf, m, func(_ context.Context, p string) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(files[p])), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return &buf, m
}

// tree reads dir as path → content (folders end in /).
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			out[rel+"/"] = ""
			return nil
		}
		b, err := os.ReadFile(p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReplaceHoldsExactlyTheFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, map[string]string{
		"chain.db":            "old chain",
		"stale.db":            "gone after",
		"raft/raft.db":        "old raft",
		"raft/snapshots/1/x":  "old snapshot",
		"packs/000001.pack":   "folder where a file goes",
		".snapshots/abc/file": "an old copy",
	})
	if err := os.Remove(filepath.Join(dir, "packs", "000001.pack")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "packs", "000001.pack", "inner"), 0o700); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"chain.db":          "new chain",
		"raft/raft.db":      "new raft",
		"packs/000001.pack": "pack bytes",
		"empty":             "",
	}
	buf, _ := stream(t, want)
	res, err := restoredata.Replace(context.Background(), dir, buf)
	if err != nil {
		t.Fatal(err)
	}
	if res.Files != 4 || res.Bytes != int64(len("new chain")+len("new raft")+len("pack bytes")) {
		t.Errorf("result %+v", res)
	}
	got := tree(t, dir)
	wantTree := map[string]string{"raft/": "", "packs/": ""}
	for p, c := range want {
		wantTree[p] = c
	}
	if len(got) != len(wantTree) {
		t.Errorf("dir holds %v, want %v", got, wantTree)
	}
	for p, c := range wantTree {
		if got[p] != c {
			t.Errorf("%s = %q, want %q (dir %v)", p, got[p], c, got)
		}
	}
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(filepath.Join(dir, "chain.db"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("chain.db mode %v, want 0600", fi.Mode().Perm())
		}
	}
}

// TestReplaceIntoAnUncleanPath: a folder given as "dir/." or "dir/./"
// (a hand-typed --dir) is the same folder: the swap knows its staging
// folder and keeps it until the files are in place.
func TestReplaceIntoAnUncleanPath(t *testing.T) {
	for _, suffix := range []string{"/.", "/./", "//"} {
		dir := t.TempDir()
		write(t, dir, map[string]string{"chain.db": "old chain", "other": "old"})
		buf, _ := stream(t, map[string]string{"chain.db": "new chain"})
		if _, err := restoredata.Replace(context.Background(), dir+suffix, buf); err != nil {
			t.Errorf("into %q: %v", "dir"+suffix, err)
			continue
		}
		if got := tree(t, dir); len(got) != 1 || got["chain.db"] != "new chain" {
			t.Errorf("into %q: the folder holds %v", "dir"+suffix, got)
		}
	}
}

func TestReplaceRefusesAMismatchAndLeavesTheDirectory(t *testing.T) {
	dir := t.TempDir()
	before := map[string]string{"chain.db": "old chain", "other": "stays"}
	write(t, dir, before)
	files := map[string]string{"chain.db": "new chain", "raft/raft.db": "new raft"}
	m := restoredata.Manifest{}
	for _, p := range []string{"chain.db", "raft/raft.db"} {
		m.Files = append(m.Files, restoredata.FileOf(p, []byte(files[p])))
	}
	// The stream carries other bytes of the same length for raft.db.
	var buf bytes.Buffer
	err := restoredata.WriteStream(context.Background(), &buf, m, func(_ context.Context, p string) (io.ReadCloser, error) {
		if p == "raft/raft.db" {
			return io.NopCloser(strings.NewReader("NEW RAFT")), nil
		}
		return io.NopCloser(strings.NewReader(files[p])), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = restoredata.Replace(context.Background(), dir, &buf)
	if !errors.Is(err, restoredata.ErrMismatch) {
		t.Fatalf("err %v, want a mismatch", err)
	}
	got := tree(t, dir)
	if len(got) != len(before) || got["chain.db"] != "old chain" || got["other"] != "stays" {
		t.Errorf("dir changed: %v", got)
	}
}

func TestReplaceRefusesACutStream(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, map[string]string{"chain.db": "old"})
	buf, _ := stream(t, map[string]string{"a": strings.Repeat("a", 4096), "b": strings.Repeat("b", 4096)})
	cut := bytes.NewReader(buf.Bytes()[:buf.Len()-3000])
	if _, err := restoredata.Replace(context.Background(), dir, cut); err == nil {
		t.Fatal("a cut stream was taken")
	}
	if got := tree(t, dir); len(got) != 1 || got["chain.db"] != "old" {
		t.Errorf("dir changed: %v", got)
	}
}

// rawStream is a tar of a manifest and entries as given, unchecked.
func rawStream(t *testing.T, m restoredata.Manifest, entries []*tar.Header, bodies []string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Marshalled as is: WriteStream would refuse a bad manifest.
	mj, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: restoredata.ManifestName, Mode: 0o600, Size: int64(len(mj))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(mj); err != nil {
		t.Fatal(err)
	}
	for i, h := range entries {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(bodies[i])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func TestReplaceRefusesPathsThatEscape(t *testing.T) {
	for _, p := range []string{"../evil", "/etc/passwd", "a/../../evil", "./a", "a//b", `a\..\b`, ".lucid-restore-x/y", ".."} {
		t.Run(p, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "data")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			f := restoredata.FileOf(p, []byte("x"))
			buf := rawStream(t, restoredata.Manifest{Files: []snapshotapi.File{f}},
				[]*tar.Header{{Name: p, Mode: 0o600, Size: 1, Typeflag: tar.TypeReg}}, []string{"x"})
			_, err := restoredata.Replace(context.Background(), dir, buf)
			if !errors.Is(err, restoredata.ErrUnsafePath) {
				t.Fatalf("err %v, want an unsafe path", err)
			}
			if got := tree(t, parent); len(got) != 1 {
				t.Errorf("something was written: %v", got)
			}
		})
	}
}

func TestReplaceRefusesWhatTheManifestDoesNotSay(t *testing.T) {
	ok := restoredata.FileOf("a", []byte("x"))
	cases := map[string]struct {
		entries []*tar.Header
		bodies  []string
	}{
		"not in the manifest": {[]*tar.Header{{Name: "a", Mode: 0o600, Size: 1}, {Name: "b", Mode: 0o600, Size: 1}}, []string{"x", "y"}},
		"missing":             {nil, nil},
		"a symlink":           {[]*tar.Header{{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}}, []string{""}},
		"twice":               {[]*tar.Header{{Name: "a", Mode: 0o600, Size: 1}, {Name: "a", Mode: 0o600, Size: 1}}, []string{"x", "x"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			buf := rawStream(t, restoredata.Manifest{Files: []snapshotapi.File{ok}}, c.entries, c.bodies)
			_, err := restoredata.Replace(context.Background(), dir, buf)
			if !errors.Is(err, restoredata.ErrStream) {
				t.Fatalf("err %v, want a bad stream", err)
			}
			if got := tree(t, dir); len(got) != 0 {
				t.Errorf("something was written: %v", got)
			}
		})
	}
	t.Run("no manifest", func(t *testing.T) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o600, Size: 1})
		_, _ = tw.Write([]byte("x"))
		_ = tw.Close()
		if _, err := restoredata.Replace(context.Background(), t.TempDir(), &buf); !errors.Is(err, restoredata.ErrStream) {
			t.Fatalf("err %v, want a bad stream", err)
		}
	})
}

// TestHalfReplacedIsMarked: a directory whose restore stopped between the
// first removal and the last rename (a power cut) is marked, Incomplete
// says so, and running the restore again finishes it and clears the mark.
func TestHalfReplacedIsMarked(t *testing.T) {
	dir := t.TempDir()
	if err := restoredata.Incomplete(dir); err != nil {
		t.Fatalf("a directory no restore touched: %v", err)
	}
	// What a cut left: the mark, one old file gone, one new in place.
	write(t, dir, map[string]string{restoredata.IncompleteName: "", "chain.db": "new chain", "stale.db": "old"})
	if err := restoredata.Incomplete(dir); !errors.Is(err, restoredata.ErrIncomplete) || !strings.Contains(err.Error(), "run the restore again") {
		t.Fatalf("a half-replaced directory: %v", err)
	}
	want := map[string]string{"chain.db": "new chain", "raft/raft.db": "new raft"}
	buf, _ := stream(t, want)
	if _, err := restoredata.Replace(context.Background(), dir, buf); err != nil {
		t.Fatal(err)
	}
	if err := restoredata.Incomplete(dir); err != nil {
		t.Errorf("after the restore ran again: %v", err)
	}
	got := tree(t, dir)
	if len(got) != 3 || got["chain.db"] != "new chain" || got["raft/raft.db"] != "new raft" {
		t.Errorf("dir holds %v", got)
	}
}
