package anchoring

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/snapshot"
)

// takeSnapshot copies session anchoring's state for a backup: anchors.db,
// the durable queue, written from one read transaction while accepts go
// on. That is everything it keeps; its counts are from the same
// transaction. Not included: the snapshot directory itself.
func (a *App) takeSnapshot(_ context.Context, dir string) (*snapshot.Copy, error) {
	facts := &snapshotapi.AnchoringFacts{}
	err := snapshot.CopyBolt(a.store.db, filepath.Join(dir, "anchors.db"), func(tx *bolt.Tx) error {
		facts.Pending = tx.Bucket(bucketPending).Stats().KeyN
		return tx.Bucket(bucketAnchors).ForEach(func(k, v []byte) error {
			var rec struct {
				Status status `json:"status"`
			}
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("anchor %q: %w", k, err)
			}
			facts.Anchors++
			if rec.Status == statusSealed {
				facts.Sealed++
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return &snapshot.Copy{Facts: snapshotapi.Facts{Anchoring: facts}}, nil
}
