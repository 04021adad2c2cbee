package backup

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
)

// readCounter is a Snapshotter that counts the reads of each copy.
type readCounter struct {
	mu    sync.Mutex
	reads map[string]int
}

func (r *readCounter) Read(_ context.Context, id, _ string, _, _ int64) (io.ReadCloser, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads[id]++
	return io.NopCloser(strings.NewReader("x")), nil
}

func (r *readCounter) Take(context.Context) (*snapshotapi.Manifest, error) {
	return nil, errors.New("not here")
}

func (r *readCounter) Drop(context.Context, string) error { return nil }

func (r *readCounter) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads[id]
}

// TestQueuedCopiesAreKeptAlive: while a backup transfers one service's
// copy, every other copy is read from often enough that its service,
// which drops a copy unread for snapshotapi.MaxAge, keeps it; and not at
// all once the backup stops touching them.
func TestQueuedCopiesAreKeptAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &readCounter{reads: map[string]int{}}
		copies := []takenCopy{
			{src, &snapshotapi.Manifest{ID: "engine-1", Files: []snapshotapi.File{{Path: "chain.db"}}}},
			{src, &snapshotapi.Manifest{ID: "mesh-1", Files: []snapshotapi.File{{Path: "ca.json"}}}},
		}
		stop := keepCopies(t.Context(), copies, snapshotapi.MaxAge/4)
		// Three hours of a transfer: every copy read in each quarter hour.
		quarter := time.NewTicker(snapshotapi.MaxAge / 4)
		defer quarter.Stop()
		for range 12 {
			<-quarter.C
			synctest.Wait()
		}
		for _, id := range []string{"engine-1", "mesh-1"} {
			if n := src.count(id); n != 12 {
				t.Errorf("copy %s read %d times in 3 hours, want 12", id, n)
			}
		}
		stop()
		for range 4 {
			<-quarter.C
		}
		synctest.Wait()
		if n := src.count("mesh-1"); n != 12 {
			t.Errorf("copy mesh-1 read after the backup stopped: %d reads", n)
		}
	})
}
