package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/service"
)

// EnvCASeed names the seed CA directory: the CA shared by the Pis of a
// cluster, made once and shipped (read-only) to each of them, so that
// their services trust each other.
const EnvCASeed = "LUCID_MESH_CA_SEED"

// seedRecordFile, in the data directory, records the seed last adopted.
const seedRecordFile = "ca-seed.json"

// seedRecord is the seed the controller last started from or adopted. It
// decides whether a CA that differs from the seed is one to replace (a
// Pi's own CA, before it joined the cluster) or one to keep (rotated here
// after the seed was adopted).
type seedRecord struct {
	// RootSHA256 is the fingerprint of the seed's root.
	RootSHA256 string `json:"root_sha256"`
	// AdoptedAt is when the controller took it.
	AdoptedAt time.Time `json:"adopted_at"`
}

// readSeedRecord reads the record in dataDir; none is the zero record.
func readSeedRecord(dataDir string) (seedRecord, error) {
	path := filepath.Join(dataDir, seedRecordFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return seedRecord{}, nil
	}
	if err != nil {
		return seedRecord{}, fmt.Errorf("mesh CA seed record: %w", err)
	}
	var rec seedRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(&rec)
	if err == nil && rec.RootSHA256 == "" {
		err = errors.New("no root fingerprint")
	}
	if err != nil {
		return seedRecord{}, fmt.Errorf("mesh CA seed record %s is damaged (%w); remove it and the controller adopts %s again if the CA differs from it", path, err, EnvCASeed)
	}
	return rec, nil
}

func writeSeedRecord(dataDir string, rec seedRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := envfile.WriteAtomic(filepath.Join(dataDir, seedRecordFile), append(data, '\n')); err != nil {
		return fmt.Errorf("mesh CA seed record: %w", err)
	}
	return nil
}

// openCA opens the controller's CA in <data dir>/ca. With a seed it starts
// from the seed when there is no CA yet, and adopts it when the CA has
// another root and the seed is not the one adopted last: that is how a
// Pi that ran on its own joins its cluster's CA. A CA that differs from the
// seed adopted last was rotated here since, and is kept.
func (a *App) openCA(ctx context.Context, dataDir string) (*meshca.CA, error) {
	dir := filepath.Join(dataDir, "ca")
	opts := meshca.Options{LeafTTL: a.leafTTL}
	if a.seed == nil {
		return meshca.Open(ctx, dir, opts)
	}
	seedFP := a.seed.Fingerprint()
	rec, err := readSeedRecord(dataDir)
	if err != nil {
		return nil, err
	}
	adopted := func() error {
		return writeSeedRecord(dataDir, seedRecord{RootSHA256: seedFP, AdoptedAt: time.Now().UTC()})
	}
	found, err := meshca.Exists(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		ca, err := meshca.OpenSeeded(ctx, dir, a.seed, opts)
		if err != nil {
			return nil, err
		}
		a.logger.Info("mesh CA started from the cluster's seed", "root_sha256", seedFP, "seed", a.seedDir)
		return ca, adopted()
	}
	ca, err := meshca.Open(ctx, dir, opts)
	if err != nil {
		return nil, err
	}
	local := ca.Fingerprint()
	switch {
	case local == seedFP:
		if rec.RootSHA256 != seedFP {
			// Adopted but not recorded (a stop in between), or a CA
			// restored from a backup of the cluster.
			return ca, adopted()
		}
		return ca, nil
	case rec.RootSHA256 == seedFP:
		a.logger.Warn("mesh CA differs from the cluster's seed it adopted (rotated on this Pi since); keeping it: the other Pis may not trust this Pi's leaves",
			"root_sha256", local, "seed_root_sha256", seedFP)
		return ca, nil
	}
	res, err := ca.Adopt(ctx, a.seed)
	if err != nil {
		return nil, fmt.Errorf("adopt the mesh CA seed: %w", err)
	}
	if err := adopted(); err != nil {
		return nil, err
	}
	args := []any{"root_sha256", res.Root, "previous_root_sha256", res.Previous, "seed", a.seedDir}
	if !res.PreviousTrustedUntil.IsZero() {
		args = append(args, "previous_trusted_until", res.PreviousTrustedUntil.UTC().Format(time.RFC3339))
	}
	a.logger.Warn("mesh CA adopted the cluster's seed: leaves issued before stay valid on this Pi until they expire; the other Pis trust this Pi's services once they restart or renew", args...)
	return ca, nil
}

// errSeeded refuses a rotation on one Pi of a cluster: it would leave the
// others without the new root.
var errSeeded = service.Errorf(http.StatusConflict, service.CodeConflict,
	"this mesh CA is the cluster's, from its seed (%s): rotating it on one Pi would split the cluster's trust; the cluster's CA is rotated by rendering a new seed and deploying it to every Pi", EnvCASeed)
