package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// TestTransitions pins the life cycle of a release.
func TestTransitions(t *testing.T) {
	for _, tc := range []struct {
		from, to ReleaseStatus
		ok       bool
	}{
		{"", ReleaseDeploying, true},
		{"", ReleaseLive, false},
		{ReleaseDeploying, ReleaseLive, true},
		{ReleaseDeploying, ReleaseFailed, true},
		{ReleaseDeploying, ReleaseReplaced, true},
		{ReleaseLive, ReleaseReplaced, true},
		{ReleaseLive, ReleaseFailed, false},
		{ReleaseLive, ReleaseDeploying, false},
		{ReleaseReplaced, ReleaseLive, true},
		{ReleaseReplaced, ReleaseFailed, false},
		{ReleaseFailed, ReleaseLive, true},
		{ReleaseFailed, ReleaseReplaced, false},
		{ReleaseUnknown, ReleaseLive, true},
		{ReleaseUnknown, ReleaseReplaced, true},
		{ReleaseLive, ReleaseUnknown, false},
		{ReleaseFailed, ReleaseUnknown, false},
		{ReleaseLive, ReleaseLive, true},
		{"mystery", ReleaseLive, false},
	} {
		err := Transition(tc.from, tc.to)
		var te *TransitionError
		if (err == nil) != tc.ok || (err != nil && !errors.As(err, &te)) {
			t.Errorf("%q → %q: %v, want allowed %v", tc.from, tc.to, err, tc.ok)
		}
	}
}

// TestReleaseRecordsOfBeforeStillRead: release.json files written before
// the status had a type read as the same statuses and write back the
// same strings.
func TestReleaseRecordsOfBeforeStillRead(t *testing.T) {
	for _, s := range []string{"deploying", "live", "failed", "replaced"} {
		raw := `{"id":"20260101T000000Z-v1","version":"v1","created":"2026-01-01T00:00:00Z","by":"me@here","images":{"gateway":"sha256:ab"},"status":"` + s + `","current":false}`
		var r Release
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			t.Fatal(err)
		}
		if string(r.Status) != s || !slices.Contains([]ReleaseStatus{ReleaseDeploying, ReleaseLive, ReleaseFailed, ReleaseReplaced}, r.Status) {
			t.Errorf("%s read as %q", s, r.Status)
		}
		back, err := json.Marshal(r)
		if err != nil || string(back) != raw {
			t.Errorf("%s wrote back as %s (%v)", s, back, err)
		}
	}
}

// TestPickRollback: by default the newest release older than the current
// one that went live; a named one whatever its status.
func TestPickRollback(t *testing.T) {
	rs := []Release{
		{ID: "5", Status: ReleaseFailed},
		{ID: "4", Status: ReleaseLive, Current: true},
		{ID: "3", Status: ReleaseFailed},
		{ID: "2", Status: ReleaseDeploying},
		{ID: "1", Status: ReleaseReplaced},
		{ID: "0", Status: ReleaseReplaced},
	}
	if target, cur := pickRollback(rs, ""); target == nil || target.ID != "1" || cur == nil || cur.ID != "4" {
		t.Errorf("default: %+v from %+v", target, cur)
	}
	if target, _ := pickRollback(rs, "3"); target == nil || target.ID != "3" {
		t.Errorf("named: %+v", target)
	}
	if target, _ := pickRollback(rs, "9"); target != nil {
		t.Errorf("a release not there: %+v", target)
	}
	if target, _ := pickRollback(rs[4:], ""); target != nil {
		t.Errorf("nothing current: %+v", target)
	}
	// Only a release newer than the current one and left deploying is a
	// cut deploy's.
	if cut := interruptedDeploys(rs); len(cut) != 0 {
		t.Errorf("cut deploys where none is newer than current: %+v", cut)
	}
	withCut := append([]Release{{ID: "6", Status: ReleaseDeploying}}, rs...)
	if cut := interruptedDeploys(withCut); len(cut) != 1 || cut[0].ID != "6" {
		t.Errorf("cut deploys: %+v, want 6", cut)
	}
	if cut := interruptedDeploys(withCut[:2]); len(cut) != 0 {
		t.Errorf("cut deploys with nothing current: %+v", cut)
	}
}

// recordFixture is a host (sshd only, no Docker) with two releases: prev
// live and current, next deploying, as a deploy leaves them just before
// next passes its gate.
func recordFixture(t *testing.T) (d *Deployer, prev, next *Release, events *[]Event) {
	t.Helper()
	f := &fixture{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: filepath.Join(t.TempDir(), "production")}
	events = new([]Event)
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir, Reporter: ReporterFunc(func(e Event) { *events = append(*events, e) })})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx := context.Background()
	prev = &Release{ID: "20260101T000000Z-v1", Version: "v1", Created: time.Unix(1, 0).UTC()}
	next = &Release{ID: "20260102T000000Z-v2", Version: "v2", Created: time.Unix(2, 0).UTC()}
	for _, r := range []*Release{prev, next} {
		if err := d.h.record(ctx, r, ReleaseDeploying); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.h.record(ctx, prev, ReleaseLive); err != nil {
		t.Fatal(err)
	}
	if err := d.h.makeCurrent(ctx, prev.ID); err != nil {
		t.Fatal(err)
	}
	return d, prev, next, events
}

// blockRecord makes every write of release id's record fail on the host,
// even for root: its temporary file's name is taken by a directory.
func blockRecord(t *testing.T, d *Deployer, id string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(d.h.releaseDir(id), releaseRecord+".lucid-tmp", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// status is what the host's records say of release id.
func status(t *testing.T, d *Deployer, id string) ReleaseStatus {
	t.Helper()
	rs, err := d.Releases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.ID == id {
			return r.Status
		}
	}
	t.Fatalf("no release %s on the host", id)
	return ""
}

// TestRecordWriteFailureIsAnError: a release that passed its gate whose
// record cannot be written is an error naming the release and the status,
// never silence, whichever of the two records fails.
func TestRecordWriteFailureIsAnError(t *testing.T) {
	ctx := context.Background()
	for _, failing := range []string{"the new release's", "the replaced release's"} {
		t.Run(failing, func(t *testing.T) {
			d, prev, next, events := recordFixture(t)
			blocked, want := next, ReleaseLive
			if failing == "the replaced release's" {
				blocked, want = prev, ReleaseReplaced
			}
			before := blocked.Status
			blockRecord(t, d, blocked.ID)
			err := d.commit(ctx, next, prev)
			var re *RecordError
			if !errors.As(err, &re) || re.Release != blocked.ID || re.Status != want {
				t.Fatalf("commit with %s record unwritable: %v, want a RecordError for %s as %s", failing, err, blocked.ID, want)
			}
			if blocked.Status != before || status(t, d, blocked.ID) != before {
				t.Errorf("the unwritten record's release is %s (host: %s), want it still %s", blocked.Status, status(t, d, blocked.ID), before)
			}
			last := (*events)[len(*events)-1]
			if last.Step != StepActivate || last.Status != EventFail {
				t.Errorf("last event %s/%s, want activate/fail", last.Step, last.Status)
			}
		})
	}
	t.Run("both written", func(t *testing.T) {
		d, prev, next, _ := recordFixture(t)
		if err := d.commit(ctx, next, prev); err != nil {
			t.Fatal(err)
		}
		if status(t, d, next.ID) != ReleaseLive || status(t, d, prev.ID) != ReleaseReplaced {
			t.Errorf("records: next %s, prev %s", status(t, d, next.ID), status(t, d, prev.ID))
		}
		if target, _ := pickRollback(mustReleases(t, d), ""); target == nil || target.ID != prev.ID {
			t.Errorf("a rollback would go to %+v, want %s", target, prev.ID)
		}
	})
}

// TestIllegalTransitionIsRefused: a record the life cycle does not allow
// is not written.
func TestIllegalTransitionIsRefused(t *testing.T) {
	d, prev, _, _ := recordFixture(t)
	err := d.h.record(context.Background(), prev, ReleaseFailed)
	var te *TransitionError
	if !errors.As(err, &te) || te.From != ReleaseLive || te.To != ReleaseFailed {
		t.Fatalf("live → failed: %v", err)
	}
	if prev.Status != ReleaseLive || status(t, d, prev.ID) != ReleaseLive {
		t.Errorf("the refused record was written: %s", status(t, d, prev.ID))
	}
}

func mustReleases(t *testing.T, d *Deployer) []Release {
	t.Helper()
	rs, err := d.Releases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
