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
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
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
