package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// owner is the user the tests act for, as the gateway would (the owner
// chaintest's anchors name), and user its client.
var (
	owner = chaintest.Anchor(0).Anchor.Owner
	user  = servicetest.User(owner)
)

var lucidBin, lucidctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lucid-e2e")
	if err != nil {
		panic(err)
	}
	if lucidBin, err = testenv.BuildLucid(dir); err == nil {
		lucidctlBin, err = testenv.BuildLucidctl(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	// TestMain has no t.TempDir; a directory it cannot remove fails the run
	// as t.TempDir's cleanup would.
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = max(code, 1)
	}
	os.Exit(code)
}

// proc is one lucid service process that can be killed and restarted with
// the same data directory and environment.
type proc struct {
	t    testing.TB
	name string
	env  []string
	url  string
	logs *testenv.SyncBuffer

	mu  sync.Mutex
	cmd *exec.Cmd
}

func newProc(t testing.TB, name string, env ...string) *proc {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL tests are Unix")
	}
	port := testenv.FreePort(t)
	p := &proc{
		t: t, name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), logs: &testenv.SyncBuffer{},
		env: append(os.Environ(),
			fmt.Sprintf("LUCID_ADDR=127.0.0.1:%d", port),
			"LUCID_DATA_DIR="+filepath.Join(t.TempDir(), name),
			"LUCID_LOG_LEVEL=warn",
		),
	}
	// The mesh is off here: the services know each other, and the tests
	// reach them, by the test service key (servicetest).
	p.env = append(p.env, servicetest.Env()...)
	p.env = append(p.env, env...)
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail(p.logs.String(), 4000))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (p *proc) start() {
	p.t.Helper()
	cmd := exec.Command(lucidBin, p.name)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.cmd = cmd
	p.mu.Unlock()
	healthy := false
	testenv.PollUntil(20*time.Second, func() bool {
		if cmd.ProcessState != nil || (cmd.Process.Signal(syscall.Signal(0)) != nil) {
			return true // it died
		}
		if resp, err := http.Get(p.url + "/health"); err == nil {
			_ = resp.Body.Close()
			healthy = resp.StatusCode == 200
		}
		return healthy
	})
	if healthy {
		return
	}
	p.t.Fatalf("%s did not come up:\n%s", p.name, tail(p.logs.String(), 3000))
}

// ready waits until the service answers /ready with 200.
func (p *proc) ready() {
	p.t.Helper()
	testenv.Eventually(p.t, 20*time.Second, p.name+" ready", func() bool {
		resp, err := http.Get(p.url + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// kill sends SIGKILL: no chance to flush or clean up.
func (p *proc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}
