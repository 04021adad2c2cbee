package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestOperateADeployedHost: two releases; a restart (gated, audited, the
// dependants named); a stop of a service others depend on, refused
// without force; stop and start; a prune with keep=1 that removes an old
// release but keeps the previous one, which a rollback then brings back;
// an audit entry that cannot be written fails no action but is said; and
// the trail shows every action with the key that authenticated.
func TestOperateADeployedHost(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := images(t, lucidBinary(t), "v1")
	c := f.dial(t)
	var events []Event
	r1, err := runDeploy(ctx, t, f.options(c, good, &events))
	if err != nil {
		t.Fatalf("first deploy: %v", err)
	}
	r2, err := runDeploy(ctx, t, f.options(c, good, &events))
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	o := f.options(c, good, &events)
	d, err := New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	// A restart or stop that takes the engine down asks BeforeUp (a
	// cluster's quorum check) under the lock first; refused, it leaves the
	// engine as it was. Nothing else asks it.
	engineStarted := func() time.Time {
		t.Helper()
		st, err := d.Status(ctx, StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Services {
			if s.Service == "engine" {
				return s.StartedAt
			}
		}
		t.Fatal("no engine in the status")
		return time.Time{}
	}
	lost := errors.New("the cluster's quorum is lost now")
	checks, unlocked := 0, 0
	d.cfg.BeforeUp = func(context.Context) error {
		checks++
		if _, locked := readLock(t, filepath.Join(f.dir, ".deploy.lock")); !locked {
			unlocked++
		}
		return lost
	}
	before := engineStarted()
	if _, err := d.Restart(ctx, ServiceOptions{Services: []string{"engine"}}); !errors.Is(err, lost) {
		t.Errorf("restart of the engine with the quorum check failing: %v", err)
	}
	if _, err := d.Stop(ctx, ServiceOptions{Force: true}); !errors.Is(err, lost) {
		t.Errorf("stop of every service with the quorum check failing: %v", err)
	}
	if checks != 2 || unlocked != 0 {
		t.Errorf("the check ran %d times (%d without the lock), want twice under it", checks, unlocked)
	}
	if after := engineStarted(); !after.Equal(before) {
		t.Errorf("the engine restarted (started %s, before %s) though the check refused", after, before)
	}
	d.cfg.BeforeUp = func(context.Context) error { checks++; return nil }

	res, err := d.Restart(ctx, ServiceOptions{Services: []string{"engine"}})
	if err != nil {
		t.Fatalf("restart engine: %v", err)
	}
	if checks != 3 {
		t.Errorf("the restart of the engine ran the check %d times in all, want 3", checks)
	}
	if res.Release != r2.Release || !slices.Contains(res.Dependants, "anchoring") || !f.gatewayHealthy() {
		t.Errorf("restart: %+v, gateway healthy %v", res, f.gatewayHealthy())
	}

	var de *DependantsError
	if _, err := d.Stop(ctx, ServiceOptions{Services: []string{"engine"}}); !errors.As(err, &de) || !slices.Contains(de.Dependants, "blocks") {
		t.Fatalf("stop engine without force: %v, want a DependantsError", err)
	}
	if _, err := d.Stop(ctx, ServiceOptions{Services: []string{"gateway"}}); err != nil {
		t.Fatalf("stop gateway: %v", err)
	}
	if f.gatewayHealthy() {
		t.Error("the gateway answers after stop")
	}
	// The trail cannot be written: the start happens and says so.
	audit := filepath.Join(f.dir, AuditFile)
	if err := os.Rename(audit, audit+".aside"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(audit, 0o755); err != nil {
		t.Fatal(err)
	}
	res, err = d.Start(ctx, ServiceOptions{Services: []string{"gateway"}})
	if err != nil || res.AuditError == "" || !f.gatewayHealthy() {
		t.Fatalf("start gateway with an unwritable trail: %+v, %v", res, err)
	}
	if checks != 3 {
		t.Errorf("the quorum check ran %d times in all, want 3: the gateway's stop and start do not take the engine down", checks)
	}
	if err := os.Remove(audit); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(audit+".aside", audit); err != nil {
		t.Fatal(err)
	}

	// An old release, older than both, with its own image tag.
	old := "20000101T000000Z-old"
	oldDir := filepath.Join(f.dir, "releases", old)
	if err := os.MkdirAll(oldDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(oldDir, releaseRecord), []byte(`{"id":"`+old+`","status":"replaced"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	oldTag := "lucid-deploytest/gateway:lucid-" + old
	if out, err := exec.Command("docker", "tag", "lucid-deploytest/gateway:t", oldTag).CombinedOutput(); err != nil {
		t.Fatalf("docker tag: %v %s", err, out)
	}
	// A dangling Lucid image made a moment ago, as a Docker build's step
	// in progress is: prune leaves it alone until it is an hour old.
	dangling := danglingLucidImage(t)
	pr, err := d.Prune(ctx, PruneOptions{Keep: 1, DryRun: true})
	if err != nil || !hasItem(pr, PruneRelease, old) {
		t.Fatalf("dry run: %+v, %v", pr, err)
	}
	if hasItem(pr, PruneDangling, dangling) {
		t.Errorf("the dry run lists a dangling image made a moment ago")
	}
	// An hour and a minute on: the dangling image is past its grace.
	now := d.cfg.Now
	d.cfg.Now = func() time.Time { return time.Now().Add(danglingGrace + time.Minute) }
	later, err := d.Prune(ctx, PruneOptions{Keep: 1, DryRun: true})
	d.cfg.Now = now
	if err != nil || !hasItem(later, PruneDangling, dangling) {
		t.Errorf("an hour later the dry run does not list the dangling image %s: %+v, %v", dangling, later, err)
	}
	if _, err := os.Stat(oldDir); err != nil {
		t.Fatal("the dry run removed the old release")
	}
	pr, err = d.Prune(ctx, PruneOptions{Keep: 1})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	t.Logf("prune: %+v", pr)
	if !hasItem(pr, PruneRelease, old) || !slices.Equal(pr.Kept, []string{r2.Release, r1.Release}) {
		t.Errorf("prune removed %+v and kept %v, want %s gone and %s, %s kept", pr.Items, pr.Kept, old, r2.Release, r1.Release)
	}
	if out, err := exec.Command("docker", "image", "inspect", dangling).CombinedOutput(); err != nil {
		t.Errorf("prune removed the young dangling image: %v %s", err, out)
	}
	if _, err := os.Stat(oldDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old release is still there: %v", err)
	}
	if out, _ := exec.Command("docker", "image", "inspect", oldTag).CombinedOutput(); !strings.Contains(string(out), "No such image") {
		t.Errorf("the old release's tag is still there: %s", out)
	}

	// The previous release is whole: a rollback brings it back.
	d.cfg.BeforeUp = func(context.Context) error { return lost }
	if _, err := d.Rollback(ctx, "", nil); !errors.Is(err, lost) {
		t.Fatalf("rollback with the quorum check failing: %v", err)
	}
	if cur := f.current(t); cur != r2.Release {
		t.Fatalf("current is %s after a refused rollback, want %s", cur, r2.Release)
	}
	d.cfg.BeforeUp = nil
	rb, err := d.Rollback(ctx, "", nil)
	if err != nil || rb.Release != r1.Release || !f.gatewayHealthy() {
		t.Fatalf("rollback after prune: %+v, %v", rb, err)
	}

	entries, err := d.AuditLog(ctx, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, string(e.Action)+"/"+string(e.Result))
		if e.Key != clientKeyFingerprint(t, f.sshd.ClientKey) || e.Target != "pi" || e.User == "" || e.Host == "" {
			t.Errorf("entry %+v: want the client key's fingerprint, the target, the user and host", e)
		}
	}
	// The refusals of the quorum check are on the trail too.
	want := []string{"deploy/ok", "deploy/ok", "restart/failed", "stop/failed", "restart/ok", "stop/failed", "stop/ok", "prune/ok", "rollback/failed", "rollback/ok"}
	if !slices.Equal(got, want) {
		t.Errorf("audit trail %v, want %v", got, want)
	}
	if len(entries) == len(want) && (entries[0].Release != r1.Release || entries[9].Release != r1.Release || !slices.Equal(entries[4].Services, []string{"engine"})) {
		t.Errorf("entries: %+v", entries)
	}
	if later, err := d.AuditLog(ctx, entries[len(entries)-1].Time); err != nil || len(later) == 0 || len(later) >= len(entries) {
		t.Errorf("since the last entry: %d entries, %v", len(later), err)
	}
	f.noSecrets(t, events)
}

// danglingLucidImage builds an untagged image with imagebuild's label, as
// the Docker builder's intermediate steps are, and returns its ID.
func danglingLucidImage(t *testing.T) string {
	t.Helper()
	build := exec.Command("docker", "build", "-q", "-")
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	// A label of its own, so that no cached build of an earlier run
	// (with an older creation time) answers instead.
	build.Stdin = strings.NewReader(fmt.Sprintf("FROM scratch\nLABEL %s=prune-test-%d\n", lucidImageLabel, time.Now().UnixNano()))
	out, err := build.Output()
	if err != nil {
		t.Fatalf("docker build: %v", err)
	}
	id := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", id).Run() })
	return id
}

func hasItem(pr *PruneResult, kind PruneKind, name string) bool {
	return pr != nil && slices.ContainsFunc(pr.Items, func(it PruneItem) bool { return it.Kind == kind && it.Name == name && it.Error == "" })
}

func clientKeyFingerprint(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(s.PublicKey())
}
