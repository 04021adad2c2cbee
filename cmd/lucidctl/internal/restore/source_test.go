package restore

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// TestDefaultBackupIsTheHostsOwn: without --backup a restore onto pi2
// takes pi2's newest backup, though pi3's is newer in the same
// repository; and when a backup's summary (plaintext, nobody's word) says
// pi2 while its manifest says pi3, the restore refuses rather than put
// pi3's data on pi2.
func TestDefaultBackupIsTheHostsOwn(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	repo, err := backup.InitRepository(ctx, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(backuptest.NewService("engine", map[string][]byte{"chain.db": []byte("blocks")}))
	defer srv.Close()
	c := snapshotapi.New(srv.URL, srv.Client())
	take := func(target string) string {
		m, err := repo.Backup(ctx, backup.BeginOptions{Target: target, Host: target + ".local"}, []backup.Snapshotter{c}, nil, backup.Events{})
		if err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	pi2, pi3 := take("pi2"), take("pi3")
	open := func() (Source, error) {
		src, _, err := OpenSource(ctx, &projectconfig.Config{}, dir, "", "", "pi2", Trust{AllowUnsigned: true}, func(string) {})
		return src, err
	}
	if src, err := open(); err != nil || src.ID() != pi2 {
		t.Fatalf("the default backup onto pi2: %v, %v; want pi2's %s, not pi3's newer %s", src, err, pi2, pi3)
	}

	// pi3's summary, rewritten to say pi2.
	info := filepath.Join(dir, "backups", pi3+".info.json")
	raw, err := os.ReadFile(info)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	fields["target"] = "pi2"
	if raw, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(info, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if src, err := open(); err == nil || !strings.Contains(err.Error(), "is of pi3 by its manifest") {
		t.Fatalf("a summary that names pi2 for pi3's backup: %v, %v; want a refusal", src, err)
	}
}
