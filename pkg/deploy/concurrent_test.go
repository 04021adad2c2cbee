package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/deployfiles"
)

// What two deploys, or two operators, do to each other: the second waits
// for the first and then works from what the first left, never from what
// it saw before.

// plantRelease writes release id with status st (and env files envs, if
// any) into the host's releases, current if current says so.
func plantRelease(t *testing.T, f *fixture, id string, st ReleaseStatus, envs map[string][]byte, current bool) {
	t.Helper()
	rd := filepath.Join(f.dir, "releases", id)
	write := func(p string, b []byte, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(rd, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rd, p), b, mode); err != nil {
			t.Fatal(err)
		}
	}
	for p, b := range envs {
		write(p, b, 0o600)
	}
	if f.compose != nil {
		c, err := pinImages(f.compose, imageName, imageTag, id)
		if err != nil {
			t.Fatal(err)
		}
		write(deployfiles.ComposePath, c, 0o644)
	}
	rec, err := json.Marshal(Release{ID: id, Version: "planted", Created: time.Now(), Status: st})
	if err != nil {
		t.Fatal(err)
	}
	write(releaseRecord, rec, 0o644)
	if current {
		tmp := filepath.Join(f.dir, "current.tmp")
		if err := os.Symlink("releases/"+id, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(f.dir, "current")); err != nil {
			t.Fatal(err)
		}
	}
}

// noneOf fails for each event of the steps named: steps a refusal must not
// have reached.
func noneOf(t *testing.T, events []Event, steps ...Step) {
	t.Helper()
	for _, e := range events {
		if slices.Contains(steps, e.Step) {
			t.Errorf("after the refusal: %s %s %s", e.Step, e.Status, e.Message)
		}
	}
}

// recordOf is the status release id's record holds.
func recordOf(t *testing.T, f *fixture, id string) ReleaseStatus {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.dir, "releases", id, releaseRecord))
	if err != nil {
		t.Fatal(err)
	}
	var r Release
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r.Status
}

// TestSecretsCheckedAgainUnderTheLock: a deploy that waits for the lock
// while another one rotates a data-bound secret holds its secrets against
// the release that other deploy made live, not against the one it saw
// before it waited, and so refuses to bring the old secret back.
func TestSecretsCheckedAgainUnderTheLock(t *testing.T) {
	f := newFixture(t)
	lockFile := filepath.Join(f.dir, ".deploy.lock")
	built := images(t, brokenBinary(t), "broken")
	plantRelease(t, f, "20200101T000000Z-r0", ReleaseLive, f.envs, true)
	plant(t, lockFile, lockInfo{Host: "laptop-a", PID: 1, User: "alice", Since: time.Now(), Expires: time.Now().Add(time.Hour), Nonce: "aaaa"})

	var events []Event
	o := f.options(f.dial(t), built, &events)
	o.cfg.LockWait = 5 * time.Minute
	waiting := make(chan struct{})
	var once sync.Once
	record := o.cfg.Reporter
	o.cfg.Reporter = ReporterFunc(func(e Event) {
		record.Event(e)
		if e.Step == StepLock && e.Status == EventStart {
			once.Do(func() { close(waiting) })
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := runDeploy(context.Background(), t, o)
		done <- err
	}()
	<-waiting
	// Alice's deploy --rotate JWT_SECRET_KEY goes live, and she unlocks.
	old := f.secrets[indexOf(t, deployfiles.Secrets, "JWT_SECRET_KEY")]
	rotated := map[string][]byte{}
	for p, b := range f.envs {
		rotated[p] = []byte(strings.ReplaceAll(string(b), old, "rotated-by-alice-0123456789abcdefghijklmnop"))
	}
	plantRelease(t, f, "20200101T000001Z-r1", ReleaseLive, rotated, true)
	if err := os.Remove(lockFile); err != nil {
		t.Fatal(err)
	}

	err := <-done
	var sc *SecretChangeError
	if !errors.As(err, &sc) || !strings.Contains(err.Error(), "JWT_SECRET_KEY") {
		t.Fatalf("the deploy that waited went on with the secret alice rotated: %v", err)
	}
	noneOf(t, events, StepRelease, StepUp)
	if got := f.current(t); got != "20200101T000001Z-r1" {
		t.Errorf("current is %s, want alice's release", got)
	}
}

func indexOf(t *testing.T, list []string, s string) int {
	t.Helper()
	for i, v := range list {
		if v == s {
			return i
		}
	}
	t.Fatalf("%s is not in %v", s, list)
	return -1
}

// TestReleaseIDsFollowTheHost: a deploy names its release after every
// release the host has, even one made by a machine whose clock ran ahead,
// so it never writes into another deploy's release and a rollback goes
// back along the order releases were made in.
func TestReleaseIDsFollowTheHost(t *testing.T) {
	f := newFixture(t)
	built := images(t, brokenBinary(t), "broken")
	ahead := releaseID(time.Now().Add(time.Hour), "test") // the same version, an hour ahead
	plantRelease(t, f, ahead, ReleaseFailed, f.envs, false)
	var events []Event
	o := f.options(f.dial(t), built, &events)
	o.cfg.HealthTimeout = 20 * time.Second
	res, err := runDeploy(context.Background(), t, o)
	if err == nil {
		t.Fatalf("a broken release went live: %+v", res)
	}
	var made string
	for _, e := range events {
		if e.Step == StepRelease && e.Status == EventStart {
			made = e.Message
		}
	}
	if made <= ahead {
		t.Errorf("the new release is %q; want one after %s", made, ahead)
	}
	if st := recordOf(t, f, ahead); st != ReleaseFailed {
		t.Errorf("the other release's record now says %q", st)
	}
	if st := recordOf(t, f, made); st != ReleaseFailed {
		t.Errorf("the new release's record says %q", st)
	}
}

func TestNextReleaseID(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 500, time.UTC)
	for _, tc := range []struct {
		have []string
		want string
	}{
		{nil, "20261206T100000Z-v2"},
		{[]string{"20261206T095959Z-v1"}, "20261206T100000Z-v2"},
		{[]string{"20261206T100000Z-v2"}, "20261206T100001Z-v2"},
		{[]string{"20261206T095000Z-v1", "20261206T100400Z-v1"}, "20261206T100401Z-v2"},
	} {
		var rs []Release
		for _, id := range tc.have {
			rs = append(rs, Release{ID: id})
		}
		if got := nextReleaseID(now, "v2", rs); got != tc.want {
			t.Errorf("after %v: %s, want %s", tc.have, got, tc.want)
		}
	}
}

// TestDeployPruneKeepsRollbackTarget: the prune that ends a deploy keeps
// the release a rollback returns to, however many failed deploys came
// between, as `lucidctl prune` does.
func TestDeployPruneKeepsRollbackTarget(t *testing.T) {
	f, _ := lockFixture(t)
	plantRelease(t, f, "20260101T000001Z-v1", ReleaseReplaced, nil, false)
	for _, id := range []string{"20260101T000002Z-v2", "20260101T000003Z-v3", "20260101T000004Z-v4", "20260101T000005Z-v5", "20260101T000006Z-v6"} {
		plantRelease(t, f, id, ReleaseFailed, nil, false)
	}
	plantRelease(t, f, "20260101T000007Z-v7", ReleaseLive, nil, true)
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir, ImageName: imageName, Tag: imageTag})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	d.prune(ctx)
	rs, err := d.Releases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if back, _ := pickRollback(rs, ""); back == nil || back.ID != "20260101T000001Z-v1" {
		t.Fatalf("after the deploy's prune a rollback goes to %v, want 20260101T000001Z-v1 (releases left: %v)", back, rs)
	}
	if len(rs) != d.cfg.KeepReleases+1 {
		t.Errorf("%d releases left, want the newest %d and the rollback's: %v", len(rs), d.cfg.KeepReleases, rs)
	}
}

// TestLockLostLeavesTheHost: a deploy whose lock another deploy took over
// while its release went up (a laptop that slept past the lock's expiry)
// does not, when its gate fails, bring its previous release back on a host
// someone else now holds.
func TestLockLostLeavesTheHost(t *testing.T) {
	f := newFixture(t)
	lockFile := filepath.Join(f.dir, ".deploy.lock")
	built := images(t, brokenBinary(t), "broken")
	plantRelease(t, f, "20200101T000000Z-r0", ReleaseLive, f.envs, true)
	var events []Event
	o := f.options(f.dial(t), built, &events)
	o.cfg.HealthTimeout = 20 * time.Second
	record := o.cfg.Reporter
	var once sync.Once
	o.cfg.Reporter = ReporterFunc(func(e Event) {
		record.Event(e)
		if e.Step == StepUp && e.Status == EventStart {
			once.Do(func() {
				plant(t, lockFile, lockInfo{Host: "laptop-b", PID: 2, User: "bob", Since: time.Now(), Expires: time.Now().Add(time.Hour), Nonce: "bbbb"})
			})
		}
	})
	_, err := runDeploy(context.Background(), t, o)
	if !errors.Is(err, errLockTaken) {
		t.Fatalf("deploy: %v, want the lock's loss said", err)
	}
	noneOf(t, events, StepRollback) // on a host bob holds
	if l, ok := readLock(t, lockFile); !ok || l.User != "bob" {
		t.Errorf("the lock is now %+v (held: %v), want bob's", l, ok)
	}
}

// TestRollbackKeepsDataBoundSecrets: a rollback to a release from before a
// rotation of a data-bound secret is refused, as a deploy bringing the old
// value back would be, unless --rotate names it.
func TestRollbackKeepsDataBoundSecrets(t *testing.T) {
	f := newFixture(t)
	old := f.secrets[indexOf(t, deployfiles.Secrets, "JWT_SECRET_KEY")]
	rotated := map[string][]byte{}
	for p, b := range f.envs {
		rotated[p] = []byte(strings.ReplaceAll(string(b), old, "rotated-0123456789abcdefghijklmnopqrstuvwxyz"))
	}
	plantRelease(t, f, "20200101T000000Z-r0", ReleaseReplaced, f.envs, false)
	plantRelease(t, f, "20200101T000001Z-r1", ReleaseLive, rotated, true)
	var events []Event
	o := f.options(f.dial(t), nil, &events)
	// The second rollback is stopped as it starts: what follows the
	// secrets' check is not this test's.
	var stop context.CancelFunc
	record := o.cfg.Reporter
	o.cfg.Reporter = ReporterFunc(func(e Event) {
		record.Event(e)
		if e.Step == StepRollback && e.Status == EventStart && stop != nil {
			stop()
		}
	})
	d, err := New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()

	_, err = d.Rollback(ctx, "", nil)
	var sc *SecretChangeError
	if !errors.As(err, &sc) || sc.Rollback != "20200101T000000Z-r0" || strings.Join(sc.Keys, ",") != "JWT_SECRET_KEY" {
		t.Fatalf("rollback across a rotation: %v", err)
	}
	noneOf(t, events, StepRollback, StepUp)
	if got := f.current(t); got != "20200101T000001Z-r1" {
		t.Errorf("current is %s", got)
	}

	// Named, it goes on to the activation.
	events = nil
	ctx, stop = context.WithCancel(ctx)
	defer stop()
	_, err = d.Rollback(ctx, "", []string{"JWT_SECRET_KEY"})
	if errors.As(err, &sc) {
		t.Fatalf("rollback with --rotate JWT_SECRET_KEY: %v", err)
	}
	started := false
	for _, e := range events {
		started = started || e.Step == StepRollback && e.Status == EventStart
	}
	if !started {
		t.Errorf("the rollback with --rotate did not start: %v", err)
	}
}

// TestBeforeUpStopsTheDeploy: a check that fails under the lock, right
// before the release goes up (a cluster's quorum lost meanwhile), stops
// the deploy with nothing changed on the host.
func TestBeforeUpStopsTheDeploy(t *testing.T) {
	f := newFixture(t)
	built := images(t, brokenBinary(t), "broken")
	plantRelease(t, f, "20200101T000000Z-r0", ReleaseLive, f.envs, true)
	var events []Event
	o := f.options(f.dial(t), built, &events)
	lost := errors.New("the cluster's quorum is lost now")
	locked := false
	o.cfg.BeforeUp = func(context.Context) error {
		_, locked = readLock(t, filepath.Join(f.dir, ".deploy.lock"))
		return lost
	}
	if _, err := runDeploy(context.Background(), t, o); !errors.Is(err, lost) {
		t.Fatalf("deploy: %v, want the check's error", err)
	}
	if !locked {
		t.Error("the check ran without the deploy lock held")
	}
	noneOf(t, events, StepRelease, StepUp)
	if ents, _ := os.ReadDir(filepath.Join(f.dir, "releases")); len(ents) != 1 {
		t.Errorf("releases %v, want the planted one alone", ents)
	}
}
