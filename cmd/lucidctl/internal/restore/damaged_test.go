package restore_test

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
)

// TestDamagedBackupStopsBeforeAnything: a backup one of whose pieces is
// damaged (the data chain's, the last service restored) is refused before
// any data directory is written: restoring the services before it and
// then failing would leave a mix of the backup's data and the old.
func TestDamagedBackupStopsBeforeAnything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "backups")
	repo, err := backup.InitRepository(ctx, repoDir, false)
	if err != nil {
		t.Fatal(err)
	}
	var srcs []backup.Snapshotter
	for _, name := range []string{"mesh", "datachain"} {
		svc := backuptest.NewService(name, map[string][]byte{name + ".db": []byte(strings.Repeat(name, 1000))})
		srv := httptest.NewServer(svc)
		t.Cleanup(srv.Close)
		srcs = append(srcs, snapshotapi.New(srv.URL, srv.Client()))
	}
	m, err := repo.Backup(ctx, backup.BeginOptions{Target: "local"}, srcs, nil, backup.Events{})
	if err != nil {
		t.Fatal(err)
	}
	sum := m.Services[1].Files[0].Pieces[0]
	if err := os.WriteFile(filepath.Join(repoDir, "blobs", sum[:2], sum), []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &project{t: t, dir: dir, config: filepath.Join(dir, "lucid.yaml")}
	if err := os.WriteFile(p.config, []byte("local:\n  state_dir: state\n  env_file: secrets.env\n  port_offset: 18500\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := p.lucidctl(ctx, "restore", "--from", repoDir, "--allow-unsigned", "--yes")
	if r.code != cli.ExitProblems || !strings.Contains(r.errOut, "nothing was stopped or written") {
		t.Fatalf("restore of a damaged backup: exit %d\n%s", r.code, r.errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Errorf("the restore wrote into the stack's state before finding the damage: %v", err)
	}
}
