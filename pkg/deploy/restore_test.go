package deploy

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/restoredata"
)

// dirData is the ServiceData of the files under dir, plus extra.
func dirData(t *testing.T, service, dir string, extra map[string]string) ServiceData {
	t.Helper()
	sd := ServiceData{Service: service, Manifest: restoredata.Manifest{Service: service}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sd.Manifest.Files = append(sd.Manifest.Files, restoredata.FileOf(filepath.ToSlash(rel), b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, c := range extra {
		sd.Manifest.Files = append(sd.Manifest.Files, restoredata.FileOf(p, []byte(c)))
	}
	sd.Open = func(_ context.Context, p string) (io.ReadCloser, error) {
		if c, ok := extra[p]; ok {
			return io.NopCloser(strings.NewReader(c)), nil
		}
		return os.Open(filepath.Join(dir, filepath.FromSlash(p)))
	}
	return sd
}

// TestRestoreIntoTheVolumes: a restore before any deploy says to deploy
// first; after one, the data chain's own data (taken out of its stopped
// container) plus a marker file go back into its volume through the
// one-shot `lucid data restore` container of its image, the service comes
// back healthy, and the marker is there. A
// file that does not match its manifest fails the restore and leaves the
// volume as it was.
func TestRestoreIntoTheVolumes(t *testing.T) {
	built := images(t, lucidBinary(t), "v1") // before the fixture's clock starts
	f := newFixture(t)
	ctx := context.Background()
	c := f.dial(t)
	var events []Event
	o := f.options(c, built, &events)
	d, err := New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	empty := ServiceData{Service: "datachain", Open: func(context.Context, string) (io.ReadCloser, error) { return nil, errors.New("unused") }}
	if _, err := d.Restore(ctx, RestoreOptions{Data: []ServiceData{empty}}); !errors.Is(err, ErrNotDeployed) {
		t.Fatalf("restore before a deploy: %v, want ErrNotDeployed", err)
	}
	if _, err := runDeploy(ctx, t, o); err != nil {
		t.Fatalf("deploy: %v", err)
	}

	const ctr = "lucid-data-chain"
	if out, err := exec.Command("docker", "stop", ctr).CombinedOutput(); err != nil {
		t.Fatalf("docker stop: %v %s", err, out)
	}
	taken := filepath.Join(t.TempDir(), "datachain")
	if out, err := exec.Command("docker", "cp", ctr+":/var/lib/lucid/datachain", taken).CombinedOutput(); err != nil {
		t.Fatalf("docker cp: %v %s", err, out)
	}
	if out, err := exec.Command("docker", "start", ctr).CombinedOutput(); err != nil {
		t.Fatalf("docker start: %v %s", err, out)
	}
	sd := dirData(t, "datachain", taken, map[string]string{"restored/marker": "from the backup"})
	if len(sd.Manifest.Files) < 2 {
		t.Fatalf("the data chain's data holds %d files", len(sd.Manifest.Files))
	}
	// Env files worked out against a release that is no longer current
	// (a deploy finished while the restore waited for the lock): refused
	// before anything changes.
	_, err = d.Restore(ctx, RestoreOptions{Data: []ServiceData{sd}, EnvFiles: map[string][]byte{}, Release: "20000101T000000Z-gone", Backup: "test-backup",
		BeforeStop: func(context.Context) error {
			t.Error("a restore into a release it did not compare with went on")
			return nil
		}})
	if !errors.Is(err, ErrReleaseChanged) {
		t.Fatalf("restore of env files compared with another release: %v, want ErrReleaseChanged", err)
	}
	stopped := false
	res, err := d.Restore(ctx, RestoreOptions{Data: []ServiceData{sd}, Backup: "test-backup", BeforeStop: func(context.Context) error {
		stopped = true
		return nil
	}})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if !stopped || res.Services["datachain"] == nil || res.Services["datachain"].Files != len(sd.Manifest.Files) {
		t.Errorf("restore: %+v (BeforeStop ran: %v)", res, stopped)
	}
	if !f.gatewayHealthy() {
		t.Error("the gateway is not healthy after the restore")
	}
	check := filepath.Join(t.TempDir(), "check")
	if out, err := exec.Command("docker", "cp", ctr+":/var/lib/lucid/datachain/restored/marker", check).CombinedOutput(); err != nil {
		t.Fatalf("the marker is not in the volume: %v %s", err, out)
	}
	if b, _ := os.ReadFile(check); string(b) != "from the backup" {
		t.Errorf("marker %q", b)
	}

	// A file whose bytes differ from the manifest's: refused, the volume
	// as it was (the marker stays), and the services stopped for it run
	// again.
	bad := dirData(t, "datachain", taken, map[string]string{"restored/other": "x"})
	for i := range bad.Manifest.Files {
		if bad.Manifest.Files[i].Path == "restored/other" {
			bad.Manifest.Files[i] = snapshotapi.File{Path: "restored/other", Size: 1, Mode: 0o600, SHA256: strings.Repeat("0", 64)}
		}
	}
	events = events[:0]
	res, err = d.Restore(ctx, RestoreOptions{Data: []ServiceData{bad}})
	if err == nil || !strings.Contains(err.Error(), "does not match") || !strings.Contains(err.Error(), "no volume was replaced, and the services stopped for the restore run again") {
		t.Fatalf("restore of a mismatching file: %v", err)
	}
	// They are said to run again once their health checks pass.
	if last := events[len(events)-1]; last.Step != StepHealth || last.Status != EventOK || !f.gatewayHealthy() {
		t.Errorf("after a restore that replaced nothing, the last event is %+v, want the services' health gate passed", last)
	}
	if res == nil || len(res.Services) != 0 {
		t.Errorf("a restore that replaced nothing: %+v", res)
	}
	for _, c := range []string{ctr, "lucid-api-gateway", "lucid-blockchain-engine"} {
		if out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", c).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "true" {
			t.Errorf("%s after a restore that replaced nothing: running %s %v", c, out, err)
		}
	}
	if out, err := exec.Command("docker", "cp", ctr+":/var/lib/lucid/datachain/restored/marker", check).CombinedOutput(); err != nil {
		t.Fatalf("the failed restore changed the volume: %v %s", err, out)
	}
	// Interrupted (Ctrl-C) while the files stream: the restore container
	// is waited for, not killed, and the operator is told so; it refuses
	// the cut stream, so the volume is as it was and the services run
	// again.
	ictx, interrupt := context.WithCancel(ctx)
	cut := sd
	cut.Open = func(c context.Context, path string) (io.ReadCloser, error) {
		interrupt()
		return sd.Open(c, path)
	}
	events = events[:0]
	// Interrupted, it starts them and does not hold the operator for
	// their health checks.
	if _, err := d.Restore(ictx, RestoreOptions{Data: []ServiceData{cut}}); err == nil || !strings.Contains(err.Error(), "no volume was replaced") ||
		!strings.Contains(err.Error(), "their health not awaited") {
		t.Fatalf("an interrupted restore: %v", err)
	}
	said := 0
	for _, e := range events {
		if e.Step == StepRestore && e.Status == EventWarn && strings.Contains(e.Message, "datachain: interrupted; waiting for the restore container") {
			said++
		}
	}
	if said != 1 {
		t.Errorf("an interrupted restore said %d times that it waits for its container: %+v", said, events)
	}
	for _, c := range []string{ctr, "lucid-api-gateway"} {
		if out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", c).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "true" {
			t.Errorf("%s after an interrupted restore: running %s %v", c, out, err)
		}
	}
	if out, err := exec.Command("docker", "cp", ctr+":/var/lib/lucid/datachain/restored/marker", check).CombinedOutput(); err != nil {
		t.Fatalf("the interrupted restore changed the volume: %v %s", err, out)
	}

	log, err := os.ReadFile(filepath.Join(f.dir, AuditFile))
	if err != nil || strings.Count(string(log), `"action":"restore"`) < 2 {
		t.Errorf("audit log has %d restores: %s", strings.Count(string(log), `"action":"restore"`), log)
	}
}

// TestRestoreWritesTheLargestFirst: the volumes are written largest
// first, so that a disk without room for a volume's copy beside its old
// data fails before any other volume was replaced; equal ones keep the
// catalog's order.
func TestRestoreWritesTheLargestFirst(t *testing.T) {
	sized := func(service string, sizes ...int64) ServiceData {
		sd := ServiceData{Service: service}
		for _, n := range sizes {
			sd.Manifest.Files = append(sd.Manifest.Files, snapshotapi.File{Size: n})
		}
		return sd
	}
	names := []string{"mesh", "engine", "anchoring", "blocks", "datachain"}
	data := []ServiceData{sized("mesh", 10), sized("engine", 300, 400), sized("anchoring", 10), sized("blocks", 200), sized("datachain", 5000, 1)}
	if got, want := largestFirst(names, data), []string{"datachain", "engine", "blocks", "mesh", "anchoring"}; !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if !slices.Equal(names, []string{"mesh", "engine", "anchoring", "blocks", "datachain"}) {
		t.Errorf("the catalog's order was changed in place: %v", names)
	}
}
