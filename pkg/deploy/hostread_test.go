package deploy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAuditLogSpeaksForItsHost: every entry read from a host's audit log
// is that host's, whatever target a line names (one planted there to
// show up as another host's in the operator's table).
func TestAuditLogSpeaksForItsHost(t *testing.T) {
	f, _ := lockFixture(t)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	line := `{"time":"2026-12-05T10:15:03Z","target":"pi2","user":"mallory","host":"x","action":"deploy","result":"ok"}` + "\n"
	if err := os.WriteFile(filepath.Join(f.dir, AuditFile), []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Name: "pi1", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	entries, err := d.AuditLog(context.Background(), time.Time{})
	if err != nil || len(entries) != 1 || entries[0].Target != "pi1" {
		t.Errorf("entries %+v, %v: want one, of pi1", entries, err)
	}
}

// TestAFencedEngineIsSeenWithoutTheOperatorToken: an engine whose fence
// cannot be read (no operator token on this laptop) is still found
// fenced by its public gauge, and its host is not shown healthy.
func TestAFencedEngineIsSeenWithoutTheOperatorToken(t *testing.T) {
	for _, gauge := range []string{"1", "0"} {
		engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/metrics" {
				_, _ = w.Write([]byte("# TYPE lucid_engine_fenced gauge\nlucid_engine_fenced " + gauge + "\n"))
				return
			}
			http.Error(w, "{}", http.StatusUnauthorized)
		}))
		c := &serviceClient{name: "engine", addr: engine.Listener.Addr().String(), hc: engine.Client(), timeout: time.Second}
		st := &HostStatus{Unknown: map[string]string{}}
		var mu sync.Mutex
		(&Deployer{}).readFence(context.Background(), c, st, false, &mu, func(fig string, err error) { st.Unknown[fig] = err.Error() })
		engine.Close()
		fenced := st.Reports.Fence != nil && st.Reports.Fence.Fenced && len(st.Problems) == 1
		if fenced != (gauge == "1") {
			t.Errorf("gauge %s: fence %+v, problems %v, unknown %v", gauge, st.Reports.Fence, st.Problems, st.Unknown)
		}
	}
}

// TestALongLogLineIsCutNotTheStream: a log line over the bound is shown
// cut, said so, and the lines after it still come; a carriage return
// before a newline goes, as before.
func TestALongLogLineIsCutNotTheStream(t *testing.T) {
	long := strings.Repeat("x", maxLogLine+100<<10)
	in := "before\n" + long + "\nafter\r\nERROR disk failing"
	var got []string
	eachLine(strings.NewReader(in), maxLogLine, func(l string) { got = append(got, l) })
	want := []string{"before", long[:maxLogLine] + truncatedMark, "after", "ERROR disk failing"}
	// A last line without its newline, as long as the reader's buffer.
	exact := strings.Repeat("y", 64<<10)
	var tail []string
	eachLine(strings.NewReader("a\n"+exact), maxLogLine, func(l string) { tail = append(tail, l) })
	if len(tail) != 2 || tail[1] != exact {
		t.Errorf("a last line of 64 KiB without a newline: %d lines", len(tail))
	}
	if !slices.Equal(got, want) {
		short := func(s []string) (out []string) {
			for _, l := range s {
				out = append(out, fmt.Sprintf("%d bytes %.20q", len(l), l))
			}
			return out
		}
		t.Errorf("lines %v, want %v", short(got), short(want))
	}
}

// TestALongAuditLogIsReadFromItsEnd: a log of years (past what is read)
// gives its newest entries, whole, the cut one at the start left out
// rather than taken for a broken line.
func TestALongAuditLogIsReadFromItsEnd(t *testing.T) {
	f, _ := lockFixture(t)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	for i := 0; log.Len() <= auditReadMax+1<<20; i++ {
		fmt.Fprintf(&log, `{"time":"2026-12-05T10:15:03Z","user":"ops","host":"laptop","action":"restart","result":"ok","release":"r%d"}`+"\n", i)
	}
	log.WriteString(`{"time":"2026-12-06T10:15:03Z","user":"ops","host":"laptop","action":"deploy","result":"ok","release":"newest"}` + "\n")
	if err := os.WriteFile(filepath.Join(f.dir, AuditFile), []byte(log.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	entries, err := d.AuditLog(context.Background(), time.Time{})
	if err != nil || len(entries) == 0 || entries[len(entries)-1].Release != "newest" {
		t.Fatalf("%d entries, %v; want the newest last, and no broken line", len(entries), err)
	}
}

// TestTheDeployLockIsInTheStatus: a host's status names who holds its
// deploy lock; a lock left to expire is none, and a file that holds no
// lock is said unknown.
func TestTheDeployLockIsInTheStatus(t *testing.T) {
	f, file := lockFixture(t)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Name: "pi1", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	facts := func() *HostStatus {
		t.Helper()
		st := &HostStatus{Unknown: map[string]string{}}
		d.hostFacts(context.Background(), st, func(fig string, err error) { st.Unknown[fig] = err.Error() })
		if st.Host.Disk == nil {
			t.Fatalf("the host's figures were not read: %v", st.Unknown)
		}
		return st
	}
	if st := facts(); st.DeployLock != nil || st.Unknown[FigureDeployLock] != "" {
		t.Errorf("no lock: %+v, %q", st.DeployLock, st.Unknown[FigureDeployLock])
	}
	since := time.Now().UTC().Truncate(time.Second)
	plant(t, file, lockInfo{Host: "laptop2", PID: 4242, User: "bob", Since: since, Expires: since.Add(30 * time.Minute), TTL: 1800, Nonce: "n1"})
	if st := facts(); st.DeployLock == nil || st.DeployLock.User != "bob" || st.DeployLock.Host != "laptop2" || st.DeployLock.PID != 4242 || !st.DeployLock.Since.Equal(since) {
		t.Errorf("a held lock: %+v, %v", st.DeployLock, st.Unknown)
	}
	if st := facts(); st.DeployLock.Ours() || time.Until(st.DeployLock.Expires) < 29*time.Minute {
		t.Errorf("another's lock written now, for 30 minutes: ours %v, expires %s", st.DeployLock.Ours(), st.DeployLock.Expires)
	}
	// Expired by the host's clock: its file is older than its TTL, whatever
	// its expiry by the holder's clock says.
	old := time.Now().Add(-31 * time.Minute)
	if err := os.Chtimes(file, old, old); err != nil {
		t.Fatal(err)
	}
	if st := facts(); st.DeployLock != nil {
		t.Errorf("a lock older than its TTL on the host: %+v", st.DeployLock)
	}
	// Written "in the future" (the host's clock stepped back since): judged
	// by its expiry, which is to come.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(file, future, future); err != nil {
		t.Fatal(err)
	}
	if st := facts(); st.DeployLock == nil {
		t.Errorf("a lock written in the future, its expiry to come: none")
	}
	plantStale(t, file, 1)
	if st := facts(); st.DeployLock != nil || st.Unknown[FigureDeployLock] != "" {
		t.Errorf("an expired lock: %+v, %q", st.DeployLock, st.Unknown[FigureDeployLock])
	}
	if err := os.WriteFile(file, []byte("not a lock\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st := facts(); st.DeployLock != nil || !strings.Contains(st.Unknown[FigureDeployLock], "holds no lock") {
		t.Errorf("a file that holds no lock: %+v, %q", st.DeployLock, st.Unknown[FigureDeployLock])
	}
	// One that cannot be read is unknown, and costs the host's other
	// figures nothing.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(file, 0o755); err != nil {
		t.Fatal(err)
	}
	if st := facts(); !strings.Contains(st.Unknown[FigureDeployLock], "could not be read") || st.Host.Memory == nil || st.Host.ClockSkewSeconds == nil {
		t.Errorf("an unreadable lock: %q, %+v", st.Unknown[FigureDeployLock], st.Host)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	// This process's own lock is known as its own; another with the same
	// machine name and pid is not.
	h := &host{name: "pi1", ssh: f.dial(t), dir: f.dir}
	if err := h.lock(context.Background(), lockInfo{Host: localHost(), PID: os.Getpid(), User: "alice", Since: time.Now(), Expires: time.Now().Add(time.Hour)}, 0, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if st := facts(); st.DeployLock == nil || !st.DeployLock.Ours() {
		t.Errorf("this process's lock: %+v", st.DeployLock)
	}
	plant(t, file, lockInfo{Host: localHost(), PID: os.Getpid(), User: "alice", Since: time.Now(), Expires: time.Now().Add(time.Hour), Nonce: "another"})
	if st := facts(); st.DeployLock == nil || st.DeployLock.Ours() {
		t.Errorf("a lock of the same machine name and pid, not taken here: %+v", st.DeployLock)
	}
}
