package deploy

import (
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// operatorToken is the fixture's LUCID_OPERATOR_TOKEN.
func (f *fixture) operatorToken(t *testing.T) string {
	t.Helper()
	i := slices.Index(deployfiles.Secrets, "LUCID_OPERATOR_TOKEN")
	if i < 0 || i >= len(f.secrets) || f.secrets[i] == "" {
		t.Fatal("the rendered files have no operator token")
	}
	return f.secrets[i]
}

// TestStatusAndLogsOfADeployedHost deploys once, then reads the host's
// status (with and without the operator token, and with a service
// stopped) and its logs, following one service across a docker restart.
func TestStatusAndLogsOfADeployedHost(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var events []Event
	o := f.options(f.dial(t), images(t, lucidBinary(t), "v1"), &events)
	o.cfg.OperatorToken = f.operatorToken(t)
	if _, err := runDeploy(ctx, t, o); err != nil {
		t.Fatalf("deploy: %v", err)
	}
	// A single host's engine is alone in its Raft configuration: the
	// caught-up gate says so once and waits for nothing.
	var caught []Event
	for _, e := range events {
		if e.Step == StepCaughtUp {
			caught = append(caught, e)
		}
	}
	if len(caught) != 1 || caught[0].Status != EventInfo || caught[0].Message != "skipped: the engine is alone in its Raft configuration" {
		t.Errorf("caught-up events of a single host: %+v", caught)
	}
	d, err := New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	st, err := d.Status(ctx, StatusOptions{OperatorToken: f.operatorToken(t)})
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.MarshalIndent(st, "", "  ")
	t.Logf("status:\n%s", doc)
	for _, s := range f.secrets {
		if s != "" && strings.Contains(string(doc), s) {
			t.Fatal("the status carries a secret")
		}
	}
	if !st.Healthy || len(st.Problems) != 0 {
		t.Errorf("a fresh deploy is not healthy: %v", st.Problems)
	}
	if st.Release == nil || st.Release.ID != f.current(t) || st.Release.Version != "test" || st.Release.By == "" {
		t.Errorf("release %+v, want the current one, %s", st.Release, f.current(t))
	}
	if len(st.Services) != len(catalog.Services) {
		t.Errorf("%d services, want %d", len(st.Services), len(catalog.Services))
	}
	for _, s := range st.Services {
		if s.State != "running" || s.Health != "healthy" || !strings.HasPrefix(s.ImageID, "sha256:") || s.StartedAt.IsZero() {
			t.Errorf("service %+v", s)
		}
		if st.Release != nil && st.Release.Images[s.Service] != s.ImageID {
			t.Errorf("%s runs %s, the release has %s", s.Service, s.ImageID, st.Release.Images[s.Service])
		}
	}
	h := st.Host
	if h.Docker == "" || h.Disk == nil || h.Disk.FreeBytes <= 0 || h.Memory == nil || len(h.Load) != 3 || h.ClockSkewSeconds == nil {
		t.Errorf("host facts %+v", h)
	}
	r := st.Reports
	if r.ChainHeight == nil || r.RaftRole != "leader" || r.AnchorQueue == nil || *r.AnchorQueue != 0 || r.DataChainBytes == nil {
		t.Errorf("reports %+v (unknown: %v)", r, st.Unknown)
	}
	// The rest of the engine's consensus status: a one-voter cluster, its
	// own leader, so no lag and no cluster to judge.
	if r.RaftNodeID == "" || r.RaftLeaderID != r.RaftNodeID || r.RaftTerm == nil || *r.RaftTerm == 0 || r.RaftAppliedIndex == nil || *r.RaftAppliedIndex == 0 ||
		r.RaftLastIndex == nil || *r.RaftLastIndex < *r.RaftAppliedIndex || len(r.RaftServers) != 1 || r.RaftServers[0].ID != r.RaftNodeID || !r.RaftServers[0].Voter {
		t.Errorf("consensus: node %q, leader %q, term %v, last %v, applied %v, servers %+v", r.RaftNodeID, r.RaftLeaderID, r.RaftTerm, r.RaftLastIndex, r.RaftAppliedIndex, r.RaftServers)
	}
	SetCommitLag([]*HostStatus{st})
	if st.Reports.RaftCommitLag == nil || *st.Reports.RaftCommitLag != 0 || ClusterOf([]*HostStatus{st}) != nil {
		t.Errorf("a one-voter engine: lag %v (unknown: %v), cluster %+v", st.Reports.RaftCommitLag, st.Unknown, ClusterOf([]*HostStatus{st}))
	}
	if r.CertNotAfter.Before(time.Now()) {
		t.Errorf("certificates expire %s (unknown: %v)", r.CertNotAfter, st.Unknown[FigureCertificates])
	}
	if len(st.Unknown) != 0 || !r.OldestPendingAnchor.IsZero() {
		t.Errorf("unknown: %v, oldest pending anchor %s; want every figure, and no anchor pending", st.Unknown, r.OldestPendingAnchor)
	}

	// Without the operator's token: what needs it is unknown, and says why.
	st, err = d.Status(ctx, StatusOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if why := st.Unknown[FigureRaftRole]; !strings.Contains(why, "LUCID_OPERATOR_TOKEN") || st.Reports.ChainHeight == nil || !st.Healthy {
		t.Errorf("without a token: raft role unknown because %q, height %v, healthy %v", why, st.Reports.ChainHeight, st.Healthy)
	}

	// The same host as another target of lucid.yaml would reach it: the
	// credentials derived for pi2 open nothing on pi's services, as those
	// a compromised pi2 recorded would not, and the figures that need
	// them say why.
	as := o.cfg
	as.Name = "pi2"
	d2, err := New(as)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	st, err = d2.Status(ctx, StatusOptions{OperatorToken: f.operatorToken(t)})
	if err != nil {
		t.Fatal(err)
	}
	if why := st.Unknown[FigureRaftRole]; !strings.Contains(why, "403") || !strings.Contains(why, "bound to another host") || st.Reports.RaftRole != "" {
		t.Errorf("pi2's credentials sent to pi's engine: raft role %q, unknown because %q", st.Reports.RaftRole, why)
	}

	// The last lines of one service.
	var lines []LogLine
	if err := d.Logs(ctx, LogOptions{Services: []string{"engine"}, Tail: 3}, func(l LogLine) { lines = append(lines, l) }); err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 || len(lines) > 3 || lines[0].Service != "engine" || lines[0].Time.IsZero() || !strings.HasPrefix(lines[0].Text, "{") {
		t.Errorf("engine's last lines: %+v", lines)
	}
	if err := d.Logs(ctx, LogOptions{Services: []string{"nosuch"}}, func(LogLine) {}); err == nil {
		t.Error("the logs of an unknown service")
	}

	// Following across a restart: the lines of the new start arrive.
	var mu sync.Mutex
	var followed []LogLine
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- d.Logs(fctx, LogOptions{Services: []string{"engine", "gateway"}, Follow: true, Tail: 1}, func(l LogLine) {
			mu.Lock()
			defer mu.Unlock()
			followed = append(followed, l)
		})
	}()
	seen := func(after time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range followed {
			if l.Service == "engine" && l.Time.After(after) {
				return true
			}
		}
		return false
	}
	testenv.Eventually(t, 30*time.Second, "the follow to read the engine's last line", func() bool { return seen(time.Time{}) })
	engine, _ := catalog.Lookup("engine")
	restarted := time.Now()
	if out, err := exec.Command("docker", "restart", engine.Container).CombinedOutput(); err != nil {
		t.Fatalf("docker restart: %v\n%s", err, out)
	}
	testenv.Eventually(t, 60*time.Second, "a line of the engine from after its restart", func() bool { return seen(restarted) })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("follow ended with %v", err)
	}

	// Healthy again, then a stopped service makes the host unhealthy, and
	// its figures unknown.
	testenv.Eventually(t, 90*time.Second, "the engine healthy again", func() bool {
		st, err := d.Status(ctx, StatusOptions{})
		return err == nil && st.Healthy
	})
	dc, _ := catalog.Lookup("datachain")
	if out, err := exec.Command("docker", "stop", dc.Container).CombinedOutput(); err != nil {
		t.Fatalf("docker stop: %v\n%s", err, out)
	}
	st, err = d.Status(ctx, StatusOptions{OperatorToken: f.operatorToken(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Healthy || len(st.Problems) != 1 || !strings.HasPrefix(st.Problems[0], "datachain: exited") || st.Unknown[FigureDataChain] == "" {
		t.Errorf("with the data chain stopped: healthy %v, problems %v, unknown %v", st.Healthy, st.Problems, st.Unknown)
	}
}
