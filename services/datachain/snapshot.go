package datachain

import (
	"context"
	"path/filepath"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/snapshot"
)

// takeSnapshot copies the data chain's state for a backup: chunks/index.db
// and every pack, hard-linked, from one moment (packstore.Store.Snapshot).
// The active pack belongs to the copy only up to its committed end at that
// moment, which is what the copy's index says and what a restore writes.
// That is everything the data chain keeps: its Merkle trees are derived
// from the index. Not included: the snapshot directory itself.
func (a *App) takeSnapshot(ctx context.Context, dir string) (*snapshot.Copy, error) {
	snap, err := a.store.Snapshot(ctx, filepath.Join(dir, "chunks"))
	if err != nil {
		return nil, err
	}
	c := &snapshot.Copy{
		Facts: snapshotapi.Facts{DataChain: &snapshotapi.DataChainFacts{
			Chunks: snap.Chunks, Sessions: snap.Sessions, SealedSessions: snap.SealedSessions,
			Packs: len(snap.Packs), PackBytes: snap.PackBytes,
		}},
		Lengths:    map[string]int64{"chunks/" + snap.Active: snap.ActiveEnd},
		AppendOnly: map[string]bool{},
	}
	for _, p := range snap.Packs {
		c.AppendOnly["chunks/"+p] = true
	}
	return c, nil
}
