package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/restoredata"
)

func TestDataRestoreReplacesTheDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "old.db"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"chain.db": "chain bytes", "raft/raft.db": "raft bytes"}
	m := restoredata.Manifest{Service: "engine"}
	for _, p := range []string{"chain.db", "raft/raft.db"} {
		m.Files = append(m.Files, restoredata.FileOf(p, []byte(files[p])))
	}
	var in bytes.Buffer
	if err := restoredata.WriteStream(context.Background(), &in, m, func(_ context.Context, p string) (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(files[p])), nil
	}); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetIn(&in)
	root.SetArgs([]string{"data", "restore", "--dir", dir})
	if err := root.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	var res restoredata.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("stdout %q: %v", out.String(), err)
	}
	if res.Files != 2 || res.Removed != 1 {
		t.Errorf("result %+v", res)
	}
	for p, c := range files {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil || string(b) != c {
			t.Errorf("%s: %q, %v", p, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "old.db")); !os.IsNotExist(err) {
		t.Errorf("old.db is still there: %v", err)
	}
}

func TestDataRestoreRefusesABadStream(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "old.db"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newRootCmd(&out, &errOut)
	root.SetIn(strings.NewReader("not a tar"))
	root.SetArgs([]string{"data", "restore", "--dir", dir})
	if err := root.ExecuteContext(context.Background()); !errors.Is(err, restoredata.ErrUnchanged) {
		t.Fatalf("a bad stream: %v, want it refused with the directory as it was", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "old.db")); err != nil || string(b) != "old" {
		t.Errorf("old.db: %q, %v", b, err)
	}
	if code := run(context.Background(), []string{"data", "restore"}, &out, &errOut); code != 2 {
		t.Errorf("without --dir: exit %d, want 2", code)
	}
	// Refused before anything changed: the exit code says so, for
	// lucidctl to start the services again on the volume as it was.
	if code := run(context.Background(), []string{"data", "restore", "--dir", filepath.Join(dir, "absent")}, &out, &errOut); code != restoredata.ExitUnchanged {
		t.Errorf("a directory that does not exist: exit %d, want %d", code, restoredata.ExitUnchanged)
	}
}
