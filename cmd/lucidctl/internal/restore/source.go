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

	"filippo.io/age"

	backupcmd "github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/projectconfig"
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

// OpenSource opens the backup a restore reads from --from and --backup: a
// backup repository (lucidctl backup's, pkg/backup), whose newest complete
// backup is the default; or a directory in the layout of OpenDir.
func OpenSource(ctx context.Context, cfg *projectconfig.Config, from, id, identity string) (Source, error) {
	if _, err := os.Stat(filepath.Join(from, DirIndex)); err == nil {
		s, err := OpenDir(from)
		if err != nil {
			return nil, err
		}
		if id != "" && id != s.ID() {
			return nil, fmt.Errorf("%s holds backup %s, not %s", from, s.ID(), id)
		}
		return s, nil
	}
	repo, err := backup.OpenRepository(ctx, from)
	if errors.Is(err, backup.ErrNotRepository) {
		return nil, cli.Usage(err)
	}
	if err != nil {
		return nil, err
	}
	ids, err := backupcmd.Identities(cfg, repo, identity)
	if err != nil {
		return nil, err
	}
	if id == "" {
		latest, err := repo.Latest(ctx)
		if err != nil {
			return nil, err
		}
		id = latest.ID
	}
	b, err := repo.Load(ctx, id, ids)
	if errors.Is(err, backup.ErrWrongIdentity) {
		return nil, cli.WithHint(err, "use the identity whose public key was in backup.recipients when this backup was taken")
	}
	if err != nil {
		return nil, err
	}
	return &repoSource{repo: repo, b: b, ids: ids}, nil
}

// repoSource is a backup of a backup repository.
type repoSource struct {
	repo *backup.Repository
	b    *backup.Backup
	ids  []age.Identity
}

func (s *repoSource) ID() string                       { return s.b.ID }
func (s *repoSource) Services() []snapshotapi.Manifest { return s.b.Services }
func (s *repoSource) EnvFiles() []snapshotapi.File     { return s.b.Env }

func (s *repoSource) Open(ctx context.Context, service, path string) (io.ReadCloser, error) {
	if service == EnvService {
		service = backup.EnvService
	}
	return s.repo.Open(ctx, s.b, service, path, s.ids)
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
