package observe

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/deploy"
)

// TestStatusShowsAHeldLock: a host whose deploy lock is held gets a line
// naming who holds it; a free lock gets none, and one that could not be
// read says why.
func TestStatusShowsAHeldLock(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	st := io.OutStyles()
	now := time.Date(2026, 12, 7, 10, 5, 0, 0, time.UTC)
	since := now.Add(-5 * time.Minute)
	host := func(s *deploy.HostStatus) string {
		var buf bytes.Buffer
		s.Target, s.Healthy = "pi3", true
		printHost(&buf, st, HostDoc{Target: "pi3", Reachable: true, HostStatus: s}, now)
		return buf.String()
	}
	if out := host(&deploy.HostStatus{}); strings.Contains(out, "lock:") {
		t.Errorf("a free lock has a line:\n%s", out)
	}
	out := host(&deploy.HostStatus{DeployLock: &deploy.LockHolder{User: "bob", Host: "laptop2", PID: 4242, Since: since, Expires: since.Add(30 * time.Minute)}})
	if !strings.Contains(out, "lock:       HELD by bob@laptop2 (pid 4242) since 2026-12-07T10:00:00Z") {
		t.Errorf("a held lock:\n%s", out)
	}
	out = host(&deploy.HostStatus{Unknown: map[string]string{deploy.FigureDeployLock: "the lock file holds no lock"}})
	if !strings.Contains(out, "lock:       unknown (the lock file holds no lock)") {
		t.Errorf("an unreadable lock:\n%s", out)
	}
}
