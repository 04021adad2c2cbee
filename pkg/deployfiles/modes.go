package deployfiles

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The project's files that hold secrets: the env files, the gateway's TLS
// files and the mesh CA seed. Render writes them 0600 (their directories
// 0700 where only secrets live), but a file copied, checked out or
// restored keeps the mode it came with, and render leaves a file whose
// content did not change alone.

// secretDirs are the project directories whose every file holds secrets;
// private says the directory itself is the operator's alone.
var secretDirs = []struct {
	path    string
	private bool
}{
	{"configs/environment", false},
	{TLSDir, false},
	{MeshCASeedDir, true},
}

// LooseSecret is a secret file or directory of a project that others than
// its owner may read.
type LooseSecret struct {
	// Path is the project path, slash-separated.
	Path string
	Mode fs.FileMode
	// Want is the mode it should have.
	Want fs.FileMode
}

// LooseSecrets lists the secret files and directories under the project
// directory dir that group or others may read or write.
func LooseSecrets(_ context.Context, dir string) ([]LooseSecret, error) {
	var out []LooseSecret
	for _, sd := range secretDirs {
		root := filepath.Join(dir, filepath.FromSlash(sd.path))
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			want := fs.FileMode(0o600)
			switch {
			case d.IsDir() && (p == root && sd.private):
				want = 0o700
			case d.IsDir():
				return nil
			case !fi.Mode().IsRegular():
				return nil
			}
			if fi.Mode().Perm()&0o077 != 0 {
				rel, err := filepath.Rel(dir, p)
				if err != nil {
					return err
				}
				out = append(out, LooseSecret{Path: filepath.ToSlash(rel), Mode: fi.Mode().Perm(), Want: want})
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("secret files in %s: %w", sd.path, err)
		}
	}
	return out, nil
}

// TightenSecrets gives every loose secret file or directory under dir its
// mode, and returns what it changed.
func TightenSecrets(ctx context.Context, dir string) ([]LooseSecret, error) {
	loose, err := LooseSecrets(ctx, dir)
	if err != nil {
		return nil, err
	}
	for _, l := range loose {
		if err := os.Chmod(filepath.Join(dir, filepath.FromSlash(l.Path)), l.Want); err != nil {
			return nil, err
		}
	}
	return loose, nil
}
