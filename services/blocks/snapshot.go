package blocks

import (
	"context"
	"path/filepath"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/snapshot"
)

// takeSnapshot copies the block manager's state for a backup: index.db,
// written from one read transaction. That is all it keeps; the index can
// be rebuilt from the engine, and is backed up so that a restored block
// manager answers at once. Not included: the snapshot directory itself.
func (a *App) takeSnapshot(_ context.Context, dir string) (*snapshot.Copy, error) {
	head, err := a.store.CopyTo(filepath.Join(dir, "index.db"))
	if err != nil {
		return nil, err
	}
	facts := &snapshotapi.BlocksFacts{}
	if head != nil {
		facts.IndexedHeight = head.Height
	}
	return &snapshot.Copy{Facts: snapshotapi.Facts{Blocks: facts}}, nil
}
