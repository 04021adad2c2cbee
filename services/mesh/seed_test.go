package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/service"
)

// makeSeed makes a seed CA directory as a render does (meshca.Open in a
// directory of its own) and returns it with its root's fingerprint.
func makeSeed(t *testing.T) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "seed")
	ca, err := meshca.Open(context.Background(), dir, meshca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return dir, ca.Fingerprint()
}

// roots are the fingerprints of the controller's trust bundle.
func (c *controller) roots(t *testing.T) []string {
	t.Helper()
	bundle, err := c.remote("engine").Bundle(context.Background(), "engine")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range bundle {
		sum := sha256.Sum256(r.Raw)
		out = append(out, hex.EncodeToString(sum[:]))
	}
	return out
}

// rootOf is the fingerprint of the current root of the CA in a stopped
// controller's data directory, read without changing it.
func rootOf(t *testing.T, data string) string {
	t.Helper()
	s, err := meshca.LoadSeed(filepath.Join(data, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return s.Fingerprint()
}

func recordOf(t *testing.T, data string) seedRecord {
	t.Helper()
	rec, err := readSeedRecord(data)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestSeedSharedByTwoControllers: two fresh controllers started from one
// seed have its root alone, and services enrolled with either one talk to
// each other over mTLS, each checking the other's leaf with its own
// controller's bundle.
func TestSeedSharedByTwoControllers(t *testing.T) {
	seed, fp := makeSeed(t)
	pi1 := startController(t, map[string]string{EnvCASeed: seed})
	pi2 := startController(t, map[string]string{EnvCASeed: seed})
	for i, c := range []*controller{pi1, pi2} {
		if got := c.roots(t); !slices.Equal(got, []string{fp}) {
			t.Fatalf("controller %d trusts %v, want the seed's root %s alone", i+1, got, fp)
		}
		log := c.log.String()
		if !strings.Contains(log, "started from the cluster's seed") || !strings.Contains(log, fp) {
			t.Errorf("controller %d does not log its start from the seed with its fingerprint:\n%s", i+1, log)
		}
		if strings.Contains(log, "PRIVATE KEY") {
			t.Error("key material in the log")
		}
	}
	engine1, gateway1 := pi1.identity(t, "engine", meshtls.Options{}), pi1.identity(t, "gateway", meshtls.Options{})
	engine2, anchoring2 := pi2.identity(t, "engine", meshtls.Options{}), pi2.identity(t, "anchoring", meshtls.Options{})
	if got, err := callAs(anchoring2, serveAs(t, engine1)); err != nil || got != "anchoring" {
		t.Errorf("anchoring of pi2 → engine of pi1: %q %v", got, err)
	}
	if got, err := callAs(gateway1, serveAs(t, engine2)); err != nil || got != "gateway" {
		t.Errorf("gateway of pi1 → engine of pi2: %q %v", got, err)
	}
}

// TestSeedAdoptedOnce: a controller that ran with its own CA adopts the
// seed when it is given one, keeping its services' leaves trusted; a later
// rotation on the Pi is kept over the same seed on the next start; a new
// seed is adopted again.
func TestSeedAdoptedOnce(t *testing.T) {
	data := t.TempDir()
	alone := startController(t, map[string]string{"LUCID_DATA_DIR": data})
	own := alone.roots(t)
	if len(own) != 1 {
		t.Fatalf("a fresh CA trusts %d roots", len(own))
	}
	oldGateway := alone.identity(t, "gateway", meshtls.Options{})
	oldEngine := alone.identity(t, "engine", meshtls.Options{})
	if err := alone.stop(); err != nil {
		t.Fatal(err)
	}

	seed, fp := makeSeed(t)
	joined := startController(t, map[string]string{"LUCID_DATA_DIR": data, EnvCASeed: seed})
	if got := joined.roots(t); len(got) != 2 || !slices.Contains(got, fp) || !slices.Contains(got, own[0]) {
		t.Fatalf("after adopting, the bundle holds %v; want the seed's root %s and the old one %s until its leaves expire", got, fp, own[0])
	}
	log := joined.log.String()
	if !strings.Contains(log, "adopted the cluster's seed") || !strings.Contains(log, fp) || !strings.Contains(log, own[0]) {
		t.Errorf("the adoption is not logged with both fingerprints:\n%s", log)
	}
	if rec := recordOf(t, data); rec.RootSHA256 != fp {
		t.Errorf("record %+v, want the seed's root %s", rec, fp)
	}
	// Services that have not renewed yet keep talking with those that did.
	newEngine := joined.identity(t, "engine", meshtls.Options{})
	newAnchoring := joined.identity(t, "anchoring", meshtls.Options{})
	if got, err := callAs(oldGateway, serveAs(t, newEngine)); err != nil || got != "gateway" {
		t.Errorf("gateway with a leaf of the old CA → engine with one of the seed: %q %v", got, err)
	}
	if got, err := callAs(newAnchoring, serveAs(t, oldEngine)); err != nil || got != "anchoring" {
		t.Errorf("anchoring with a leaf of the seed → engine with one of the old CA: %q %v", got, err)
	}
	if err := joined.stop(); err != nil {
		t.Fatal(err)
	}

	// The CA changes on this Pi after the adoption: a root of its own
	// again, as a rotation here would make (a real rotation is refused
	// for a leaf lifetime after the adoption, whose old root is still
	// trusted).
	caDir := filepath.Join(data, "ca")
	if err := os.RemoveAll(caDir); err != nil {
		t.Fatal(err)
	}
	ca, err := meshca.Open(context.Background(), caDir, meshca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rotated := ca.Fingerprint()
	kept := startController(t, map[string]string{"LUCID_DATA_DIR": data, EnvCASeed: seed})
	if !strings.Contains(kept.log.String(), "keeping it") {
		t.Errorf("keeping the local CA is not logged:\n%s", kept.log.String())
	}
	if err := kept.stop(); err != nil {
		t.Fatal(err)
	}
	if got := rootOf(t, data); got != rotated {
		t.Fatalf("the same seed was adopted again over a local rotation: root %s, want %s", got, rotated)
	}

	// A new seed (the cluster's CA rotated by a new render) is adopted.
	seed2, fp2 := makeSeed(t)
	again := startController(t, map[string]string{"LUCID_DATA_DIR": data, EnvCASeed: seed2})
	if err := again.stop(); err != nil {
		t.Fatal(err)
	}
	if got := rootOf(t, data); got != fp2 {
		t.Fatalf("a new seed was not adopted: root %s, want %s", got, fp2)
	}
	if rec := recordOf(t, data); rec.RootSHA256 != fp2 {
		t.Errorf("record %+v, want the new seed's root %s", rec, fp2)
	}
}

// TestCorruptSeed: a seed that cannot be read or checked is a
// configuration error, and the CA in place is left exactly as it was.
func TestCorruptSeed(t *testing.T) {
	data := t.TempDir()
	ca, err := meshca.Open(context.Background(), filepath.Join(data, "ca"), meshca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(data, "ca", "ca.json")
	before, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}

	corrupt, _ := makeSeed(t)
	seedState := filepath.Join(corrupt, "ca.json")
	raw, _ := os.ReadFile(seedState)
	broken := strings.Replace(string(raw), `"root_key": "-----BEGIN PRIVATE KEY-----\nMI`, `"root_key": "-----BEGIN PRIVATE KEY-----\nXX`, 1)
	if broken == string(raw) {
		t.Fatal("test did not corrupt the seed")
	}
	if err := os.WriteFile(seedState, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, dir := range map[string]string{
		"corrupt":  corrupt,
		"missing":  filepath.Join(t.TempDir(), "nowhere"),
		"not JSON": writeFile(t, "ca.json", "not json"),
	} {
		t.Run(name, func(t *testing.T) {
			env := envconfig.Map(map[string]string{
				"LUCID_ADDR": "127.0.0.1:0", "LUCID_DATA_DIR": data, "LUCID_MESH_TOKEN": testToken, EnvCASeed: dir,
			})
			err := service.Main(context.Background(), "mesh", New(), env, io.Discard)
			var ce *service.ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), EnvCASeed) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Main with a %s seed = %v, want a configuration error naming %s and the directory", name, err, EnvCASeed)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Error("the error shows key material")
			}
		})
	}
	after, err := os.ReadFile(statePath)
	if err != nil || string(after) != string(before) {
		t.Fatalf("the CA changed (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(data, seedRecordFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a seed record was written: %v", err)
	}
	if rootOf(t, data) != ca.Fingerprint() {
		t.Fatal("the CA has another root")
	}
}

// writeFile makes a directory holding name with content.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRotationRefusedWithSeed: a cluster's CA is not rotated on one Pi.
func TestRotationRefusedWithSeed(t *testing.T) {
	seed, fp := makeSeed(t)
	c := startController(t, map[string]string{EnvCASeed: seed})
	_, err := c.operator().Rotate(context.Background())
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "rendering a new seed") {
		t.Fatalf("rotation with a seed: %v, want 409 saying the cluster's CA is rotated by a new seed", err)
	}
	if got := c.roots(t); !slices.Equal(got, []string{fp}) {
		t.Fatalf("the bundle changed: %v", got)
	}
}

// TestSeedRecordDamaged: a damaged record stops the controller with the
// file named, and the CA is untouched.
func TestSeedRecordDamaged(t *testing.T) {
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, seedRecordFile), []byte(`{"root_sha256":`), 0o600); err != nil {
		t.Fatal(err)
	}
	seed, _ := makeSeed(t)
	env := envconfig.Map(map[string]string{"LUCID_ADDR": "127.0.0.1:0", "LUCID_DATA_DIR": data, "LUCID_MESH_TOKEN": testToken, EnvCASeed: seed})
	err := service.Main(context.Background(), "mesh", New(), env, io.Discard)
	if err == nil || !strings.Contains(err.Error(), seedRecordFile) {
		t.Fatalf("Main with a damaged seed record = %v, want an error naming %s", err, seedRecordFile)
	}
	if found, err := meshca.Exists(filepath.Join(data, "ca")); err != nil || found {
		t.Errorf("a CA was made: %v %v", found, err)
	}
}
