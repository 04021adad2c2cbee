package snapshot_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
	"github.com/pickme/lucid/pkg/snapshot"
)

// A running service removes a copy nobody dropped once it is older than
// MaxAge, without another take.
func TestExpiredWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dataDir := t.TempDir()
		s, m := registerAndTake(t, dataDir)
		half := time.NewTimer(snapshotapi.MaxAge / 2)
		<-half.C
		synctest.Wait()
		if ids := s.IDs(); len(ids) != 1 {
			t.Fatalf("copies at half their age = %v", ids)
		}
		later := time.NewTimer(snapshotapi.MaxAge/2 + 15*time.Minute)
		<-later.C
		synctest.Wait()
		if ids := s.IDs(); len(ids) != 0 {
			t.Fatalf("copies past their age = %v", ids)
		}
		if _, err := os.Stat(filepath.Join(dataDir, snapshotapi.SnapshotDir, m.ID)); !os.IsNotExist(err) {
			t.Fatalf("the expired copy is still on disk: %v", err)
		}
	})
}

// A copy read from (a first backup over a slow link) outlives MaxAge from
// its taking, and expires MaxAge after its last read.
func TestCopyInUseIsNotExpired(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, m := registerAndTake(t, t.TempDir())
		// A read every 20 minutes, for twice MaxAge.
		tick := time.NewTicker(20 * time.Minute)
		defer tick.Stop()
		for range 2 * int(snapshotapi.MaxAge/(20*time.Minute)) {
			<-tick.C
			synctest.Wait()
			f, err := s.Open(m.ID, "state", 0, 1)
			if err != nil {
				t.Fatalf("a read %s into the backup: %v", time.Since(m.TakenAt), err)
			}
			_ = f.Close()
		}
		tick.Stop()
		idle := time.NewTimer(snapshotapi.MaxAge + 15*time.Minute)
		<-idle.C
		synctest.Wait()
		if ids := s.IDs(); len(ids) != 0 {
			t.Fatalf("copies left unread past MaxAge = %v", ids)
		}
	})
}

// registerAndTake registers a service's snapshots in dataDir, running
// until the test ends, and takes one copy.
func registerAndTake(t *testing.T, dataDir string) (*snapshot.Server, *snapshotapi.Manifest) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := service.New(servicetest.Config("anchoring", dataDir), slog.New(slog.DiscardHandler))
	s, err := snapshot.Register(ctx, srv, func(_ context.Context, dir string) (*snapshot.Copy, error) {
		return &snapshot.Copy{}, os.WriteFile(filepath.Join(dir, "state"), []byte("x"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s, m
}
