package deploy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
)

// TestEveryDockerCallIsBounded: every call a host's Docker client makes
// (restart, stop, start, the container list status and prune read) ends
// once the Engine has not begun to answer within the client's bound, so
// no command holds the deploy lock for ever on a hung Engine.
func TestEveryDockerCallIsBounded(t *testing.T) {
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Header().Set("Api-Version", "1.44") // version negotiation answers; the rest hangs
			return
		}
		<-r.Context().Done()
	}))
	t.Cleanup(silent.Close)
	t.Cleanup(silent.CloseClientConnections) // first: a call left hanging would hold Close
	dc, err := newDockerClient(func() (net.Conn, error) { return net.Dial("tcp", silent.Listener.Addr().String()) }, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	ctx := context.WithoutCancel(t.Context())
	calls := map[string]func() error{
		"restart": func() error { return dc.ContainerRestart(ctx, "c1", container.StopOptions{}) },
		"stop":    func() error { return dc.ContainerStop(ctx, "c1", container.StopOptions{}) },
		"start":   func() error { return dc.ContainerStart(ctx, "c1", container.StartOptions{}) },
		"list": func() error {
			_, err := dc.ContainerList(ctx, container.ListOptions{All: true})
			return err
		},
	}
	for name, call := range calls {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "timeout awaiting response headers") {
				t.Errorf("%s on a silent Engine: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s on a silent Engine did not end", name)
		}
	}
}

// TestHealthGateOutlastsNoDockerAnswer: a host whose Docker Engine stops
// answering (sshd still up) ends the health gate soon after its timeout,
// saying so, instead of holding it (and the lock) for ever.
func TestHealthGateOutlastsNoDockerAnswer(t *testing.T) {
	h := &host{name: "pi", docker: silentDocker(t), project: "lucid", dockerWait: 200 * time.Millisecond}
	err := h.waitHealthy(context.Background(), "r1", 1, 100*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("the gate with a silent Docker Engine: %v", err)
	}
}

// TestRestoreWritesOnlyServiceEnvFiles: a backup's env file whose path is
// not a service's (a planted backup's "../../.ssh/authorized_keys") is
// refused before anything happens on the host.
func TestRestoreWritesOnlyServiceEnvFiles(t *testing.T) {
	f, lockFile := lockFixture(t)
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, p := range []string{"../../.ssh/authorized_keys", "configs/environment/../../../x.env", "configs/environment/evil.env", "/etc/passwd"} {
		_, err := d.Restore(context.Background(), RestoreOptions{EnvFiles: map[string][]byte{p: []byte("x")}})
		if err == nil || !strings.Contains(err.Error(), "not a service's env file") {
			t.Errorf("env file %q: %v", p, err)
		}
	}
	if _, err := os.Stat(lockFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused restore touched the host (its lock file: %v)", err)
	}
}

// TestComposeUpIsBounded: an activation whose compose up does not finish
// (a Docker Engine that stopped answering) ends at compose up's limit,
// saying so, and so does the look at the containers after it, rather than
// hold the deploy and its lock for ever.
func TestComposeUpIsBounded(t *testing.T) {
	f, _ := lockFixture(t)
	const id = "20260101T000000Z-v1"
	if err := os.MkdirAll(filepath.Join(f.dir, "releases", id), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir, HealthTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// The compose command waits like a hung Engine (what follows it on
	// the line runs only after), and the Engine's API never answers.
	d.h.compose, d.h.upGrace, d.h.dockerWait = "sleep 60;", 200*time.Millisecond, 200*time.Millisecond
	d.h.docker = silentDocker(t)
	done := make(chan error, 1)
	go func() {
		_, err := d.activate(context.WithoutCancel(t.Context()), &Release{ID: id}, nil, nil, false)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "did not finish within 300ms") {
			t.Fatalf("an activation whose compose up hangs: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an activation whose compose up hangs, with a silent Engine, did not end")
	}
}

// silentDocker is a Docker client of an Engine that never answers.
func silentDocker(t *testing.T) *client.Client {
	t.Helper()
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(silent.Close)
	dc, err := client.NewClientWithOpts(client.WithHost("tcp://"+silent.Listener.Addr().String()), client.WithVersion("1.44"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	return dc
}

// TestStatusOutlastsAHostThatHangs: a host whose commands stop answering
// (a release record that cannot be read: a dying card; here a named pipe
// no one writes) gives its status within the status timeout, the release
// unknown, instead of holding status, and the quorum check that reads it
// under the deploy lock, for ever.
func TestStatusOutlastsAHostThatHangs(t *testing.T) {
	f, _ := lockFixture(t)
	rel := filepath.Join(f.dir, "releases", "20260101T000000Z-v1")
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(rel, "release.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/_ping"):
			w.Header().Set("Api-Version", "1.44")
		case strings.HasSuffix(r.URL.Path, "/containers/json"):
			_, _ = w.Write([]byte("[]"))
		default:
			_, _ = w.Write([]byte("{}"))
		}
	}))
	t.Cleanup(engine.Close)
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.h.docker, err = newDockerClient(func() (net.Conn, error) { return net.Dial("tcp", engine.Listener.Addr().String()) }, time.Second); err != nil {
		t.Fatal(err)
	}
	done := make(chan *HostStatus, 1)
	go func() {
		st, _ := d.Status(context.WithoutCancel(t.Context()), StatusOptions{Timeout: 300 * time.Millisecond})
		done <- st
	}()
	select {
	case st := <-done:
		if st == nil || st.Unknown[FigureRelease] == "" {
			t.Errorf("status of a hung host: %+v, want the release unknown", st)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("status of a host whose commands hang did not end")
	}
}
