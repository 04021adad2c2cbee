package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"

	backupcmd "github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// Source is one backup, as a restore reads it: each service's manifest,
// the env files, and the bytes of any file: a backup of the repository
// (pkg/backup), or a test's own.
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
const EnvService = backup.EnvService

// OpenSource opens the backup a restore onto target (a host's name, or
// auth.LocalHost) reads from --from (default backup.dir) and --backup: a
// backup of lucidctl backup's repository (pkg/backup), by default the
// newest complete one of target; a backup named by id may be another
// target's, which note says. It also returns the repository's directory.
func OpenSource(ctx context.Context, cfg *projectconfig.Config, from, id, identity, target string, trust Trust, note func(string)) (Source, string, error) {
	repo, dir, err := backupcmd.OpenRepository(ctx, cfg, "--from", from)
	if err != nil {
		return nil, "", err
	}
	if err := backupcmd.TrustSigners(repo, cfg, trust.OperatorToken, trust.AllowUnsigned); err != nil {
		return nil, "", err
	}
	ids, err := backupcmd.Identities(cfg, repo, identity)
	if err != nil {
		return nil, "", err
	}
	named := id != ""
	if !named {
		// The newest of this target's only: one repository holds the
		// backups of every host, and another host's data (its
		// validator key, its chain) must never be restored by default.
		latest, err := repo.LatestOf(ctx, target)
		if errors.Is(err, backup.ErrNoBackup) {
			err = cli.WithHint(err, "`lucidctl backup list` shows each backup's target; restore another's with --backup ID")
		}
		if err != nil {
			return nil, "", backupcmd.ExplainUnsigned(err)
		}
		id = latest.ID
	}
	b, err := repo.Load(ctx, id, ids)
	if err != nil {
		return nil, "", backupcmd.ExplainUnsigned(backupcmd.ExplainIdentity(err))
	}
	switch {
	case b.Target == target:
	case !named:
		// The summary LatestOf chose by is nobody's word; the manifest
		// is the backup's (signed, unless --allow-unsigned).
		return nil, "", cli.WithHint(fmt.Errorf("%s: the newest backup of %s by its summary, %s, is of %s by its manifest: the summary was damaged or changed; nothing was restored", dir, target, b.ID, b.Target),
			"`lucidctl backup list` shows the backups; name the one to restore with --backup ID")
	default:
		note(fmt.Sprintf("backup %s is of %s (host %s), restored onto %s as --backup asks: its engine brings %s's validator key, which two running hosts must never share",
			b.ID, b.Target, b.Host, target, b.Target))
	}
	return &repoSource{repo: repo, b: b, ids: ids}, dir, nil
}

// Trust says whose backups a restore takes: those signed by a key of
// backup.signers or the one derived from OperatorToken, or, with
// AllowUnsigned, any.
type Trust struct {
	OperatorToken string
	AllowUnsigned bool
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

// Verify reads every piece of the backup and checks it.
func (s *repoSource) Verify(ctx context.Context) error {
	rep, err := s.repo.Verify(ctx, s.b.ID, s.ids)
	if rep != nil && len(rep.Problems) > 0 {
		return fmt.Errorf("backup %s is damaged: %s", s.b.ID, strings.Join(rep.Problems, "; "))
	}
	return err
}

func (s *repoSource) Open(ctx context.Context, service, path string) (io.ReadCloser, error) {
	return s.repo.Open(ctx, s.b, service, path, s.ids)
}
