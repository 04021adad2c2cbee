package mesh

import (
	"context"
	"path/filepath"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/snapshot"
)

// takeSnapshot copies the mesh controller's state for a backup: the CA
// (ca/ca.json with the root and intermediate keys and certificates, and
// ca/bundle.pem), copied between two changes of it, and mesh.db, the
// outside registrations, written from one read transaction. Leaf
// certificates are not kept by the controller (services fetch new ones),
// and Consul's own state is Consul's. Not included: the snapshot
// directory itself.
func (a *App) takeSnapshot(_ context.Context, dir string) (*snapshot.Copy, error) {
	fp, err := a.ca.CopyTo(filepath.Join(dir, "ca"))
	if err != nil {
		return nil, err
	}
	if err := snapshot.CopyBolt(a.reg.db, filepath.Join(dir, "mesh.db"), nil); err != nil {
		return nil, err
	}
	return &snapshot.Copy{Facts: snapshotapi.Facts{Mesh: &snapshotapi.MeshFacts{RootFingerprint: fp}}}, nil
}
