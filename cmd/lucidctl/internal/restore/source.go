package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/restoredata"
)

// Source is one backup, as a restore reads it: each service's manifest,
// the env files, and the bytes of any file. The backup repository
// (pkg/backup) is one; a directory in the layout of OpenDir is another.
type Source interface {
	// ID names the backup.
	ID() string
	// Services are the services' manifests, with their facts.
	Services() []snapshotapi.Manifest
	// EnvFiles are the deployed env files at the backup, by project path
	// (deployfiles.ServiceEnvPath).
	EnvFiles() []snapshotapi.File
	// Open returns a file's bytes: service's file at path, or with
	// service EnvService the env file at path. The caller closes it.
	Open(ctx context.Context, service, path string) (io.ReadCloser, error)
}

// EnvService is the service name under which Source.Open reads env files.
const EnvService = ""

// DirIndex is the index of a backup directory (see OpenDir).
const DirIndex = "backup.json"

// dirIndex is the content of DirIndex.
type dirIndex struct {
	ID       string                 `json:"id"`
	Services []snapshotapi.Manifest `json:"services"`
	EnvFiles []snapshotapi.File     `json:"env_files,omitempty"`
}

// dirSource is a backup laid out as plain files: DIR/backup.json, each
// service's files under DIR/data/<service>/, the env files under DIR/env/.
type dirSource struct {
	dir string
	idx dirIndex
}

// OpenSource opens the backup a restore reads from --from and --backup.
// It is a variable so that the backup repository can take its place.
var OpenSource = func(_ context.Context, from, id string) (Source, error) {
	s, err := OpenDir(from)
	if err != nil {
		return nil, err
	}
	if id != "" && id != s.ID() {
		return nil, fmt.Errorf("%s holds backup %s, not %s", from, s.ID(), id)
	}
	return s, nil
}

// OpenDir opens a backup directory: DIR/backup.json (the id, each
// service's manifest, the env files), each service's files under
// DIR/data/<service>/ and the env files under DIR/env/.
func OpenDir(dir string) (Source, error) {
	b, err := os.ReadFile(filepath.Join(dir, DirIndex))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a backup: it has no %s", dir, DirIndex)
	}
	if err != nil {
		return nil, err
	}
	s := &dirSource{dir: dir}
	if err := json.Unmarshal(b, &s.idx); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, DirIndex), err)
	}
	if s.idx.ID == "" {
		return nil, fmt.Errorf("%s: no backup id", filepath.Join(dir, DirIndex))
	}
	return s, nil
}

// WriteDirIndex writes the index of a backup directory whose files are
// already in place.
func WriteDirIndex(dir, id string, services []snapshotapi.Manifest, env []snapshotapi.File) error {
	b, err := json.MarshalIndent(dirIndex{ID: id, Services: services, EnvFiles: env}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, DirIndex), b, 0o600)
}

func (s *dirSource) ID() string                       { return s.idx.ID }
func (s *dirSource) Services() []snapshotapi.Manifest { return s.idx.Services }
func (s *dirSource) EnvFiles() []snapshotapi.File     { return s.idx.EnvFiles }

func (s *dirSource) Open(_ context.Context, service, path string) (io.ReadCloser, error) {
	if err := restoredata.CheckPath(path); err != nil {
		return nil, err
	}
	base := filepath.Join(s.dir, "env")
	if service != EnvService {
		if err := restoredata.CheckPath(service); err != nil {
			return nil, err
		}
		base = filepath.Join(s.dir, "data", service)
	}
	return os.Open(filepath.Join(base, filepath.FromSlash(path)))
}
