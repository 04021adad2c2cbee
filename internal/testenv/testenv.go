// Package testenv finds the real tools that Lucid's tests run against
// (consul, pebble, sshd, redis-server, wrk, docker-compose) and decides what
// happens when one is missing: the test is skipped on a developer's machine,
// and fails in CI (CI=true), where scripts/test.sh has installed everything.
package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/pkg/consulready"
)

// InCI reports whether the tests run in CI, where no tool may be missing.
func InCI() bool { return os.Getenv("CI") == "true" }

// Tool returns the path of the tool called name: the file named by the
// environment variable envVar if it is set (scripts/test.sh sets
// LUCID_CONSUL_BIN to its cached build), else name on PATH. When the tool is
// missing it skips t, or fails it in CI.
func Tool(t testing.TB, name, envVar string) string {
	t.Helper()
	if envVar != "" {
		if p := os.Getenv(envVar); p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
			Missing(t, name+" ("+envVar+"="+p+" does not exist)")
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
			if q := filepath.Join(dir, name); isFile(q) {
				return q
			}
		}
		Missing(t, name)
	}
	return p
}

// Missing skips t because what is named is missing, or fails it in CI.
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is missing; CI=true requires it (scripts/test.sh installs it)", what)
	}
	t.Skipf("%s is missing; skipping (scripts/test.sh installs it)", what)
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// ProcessAlive reports whether pid is a live process. A zombie counts as
// dead: an orphan's zombie may wait forever for an init that does not reap
// (PID 1 in a container), and it holds nothing.
func ProcessAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil || p.Signal(syscall.Signal(0)) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return runtime.GOOS != "linux"
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || !strings.HasPrefix(string(stat[i+1:]), " Z")
}

// Eventually polls cond every 20 ms until it holds, failing t after within.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !PollUntil(within, cond) {
		t.Fatalf("%s: not within %s", what, within)
	}
}

// PollUntil polls cond every 20 ms until it holds (true) or within has
// passed (false). cond is the real condition waited for, such as a
// readiness probe answering, never the mere passing of time.
func PollUntil(within time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// BuildLucid builds the lucid service binary into dir and returns its path;
// TestMain functions call it once for their package.
func BuildLucid(dir string) (string, error) { return build(dir, "lucid") }

// BuildLucidctl builds lucidctl into dir and returns its path.
func BuildLucidctl(dir string) (string, error) { return build(dir, "lucidctl") }

func build(dir, name string) (string, error) {
	bin := filepath.Join(dir, name)
	// Static, as releases are: the same binary runs here and in an image.
	cmd := exec.Command("go", "build", "-o", bin, "github.com/pickme/lucid/cmd/"+name)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", name, err, out)
	}
	return bin, nil
}

// StartRedis runs a private redis-server (no persistence) on a free
// loopback port for the test and returns its address. It skips, or fails
// in CI, when redis-server is missing.
func StartRedis(t testing.TB) string { return StartRedisServer(t).Addr }

// RedisServer is a redis-server run for a test.
type RedisServer struct {
	// Addr is its address, host:port.
	Addr string
	bin  string
	dir  string
	cmd  *exec.Cmd
}

// StartRedisServer is StartRedis for tests that also stop and restart the
// server.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	r := &RedisServer{
		bin:  Tool(t, "redis-server", "LUCID_REDIS_BIN"),
		Addr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		dir:  t.TempDir(),
	}
	t.Cleanup(r.Stop)
	r.Start(t)
	return r
}

// Stop kills the server (as a crash would: it keeps nothing).
func (r *RedisServer) Stop() {
	if r.cmd != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

// Start starts the server on its address, empty, and waits until it
// answers.
func (r *RedisServer) Start(t testing.TB) {
	t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	Eventually(t, 10*time.Second, "redis-server up", func() bool {
		c, err := net.DialTimeout("tcp", r.Addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = c.Write([]byte("PING\r\n"))
		buf := make([]byte, 7)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf)
		return strings.HasPrefix(string(buf[:n]), "+PONG")
	})
}

// StartConsul runs a private Consul dev agent on free loopback ports for
// the test and returns its HTTP address (host:port) once it has a leader.
// It skips, or fails in CI, when no consul binary is found.
func StartConsul(t testing.TB) string { return StartConsulAgent(t).Addr }

// ConsulAgent is a Consul dev agent run for a test.
type ConsulAgent struct {
	// Addr is the HTTP address, host:port.
	Addr string
	bin  string
	args []string
	cmd  *exec.Cmd
	out  SyncBuffer
	// token reads the catalog of an agent whose configuration turns ACLs
	// on: its initial management token.
	token string
	// client makes this helper's calls, its connections reused: Consul
	// refuses a client address more than 200 at a time, and every
	// process of a test shares 127.0.0.1.
	client *http.Client
}

// StartConsulAgent is StartConsul for tests that also restart the agent.
func StartConsulAgent(t testing.TB) *ConsulAgent {
	t.Helper()
	return startConsulAgent(t, "")
}

// StartConsulAgentWithConfig is StartConsulAgent with a configuration file
// (JSON, as -config-file takes it) merged into the dev agent's, such as
// meshapi.ConsulAgentConfig's. A restart keeps it.
func StartConsulAgentWithConfig(t testing.TB, configJSON []byte) *ConsulAgent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "lucid.json") // the extension names the format
	if err := os.WriteFile(path, configJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ACL struct {
			Tokens struct {
				InitialManagement string `json:"initial_management"`
			} `json:"tokens"`
		} `json:"acl"`
	}
	if err := json.Unmarshal(configJSON, &cfg); err != nil {
		t.Fatalf("consul configuration: %v", err)
	}
	return startConsulAgent(t, cfg.ACL.Tokens.InitialManagement, "-config-file="+path)
}

func startConsulAgent(t testing.TB, token string, extra ...string) *ConsulAgent {
	t.Helper()
	bin := Tool(t, "consul", "LUCID_CONSUL_BIN")
	port := func() string { return fmt.Sprint(FreePort(t)) }
	httpPort := port()
	a := &ConsulAgent{
		Addr:   "127.0.0.1:" + httpPort,
		bin:    bin,
		token:  token,
		client: &http.Client{Timeout: 2 * time.Second},
		args: []string{"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-node=lucid-test",
			"-http-port=" + httpPort, "-grpc-port=-1", "-grpc-tls-port=-1", "-dns-port=-1",
			"-server-port=" + port(), "-serf-lan-port=" + port(), "-serf-wan-port=" + port()},
	}
	a.args = append(a.args, extra...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("consul output:\n%s", a.out.String())
		}
	})
	t.Cleanup(a.stop)
	a.start(t)
	return a
}

// Output is what the agent has printed, in every start.
func (a *ConsulAgent) Output() string { return a.out.String() }

// Restart kills the agent and starts a new one on the same ports. A dev
// agent keeps nothing, so every registration is gone, as after a crash.
func (a *ConsulAgent) Restart(t testing.TB) {
	t.Helper()
	a.stop()
	a.start(t)
}

func (a *ConsulAgent) stop() {
	if a.cmd != nil {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
		a.cmd = nil
	}
}

func (a *ConsulAgent) start(t testing.TB) {
	t.Helper()
	a.cmd = exec.Command(a.bin, a.args...)
	a.cmd.Stdout, a.cmd.Stderr = &a.out, &a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start consul: %v", err)
	}
	// Not only a leader: an agent whose first copy of its state to the
	// catalog came too early copies its checks' results there only 15 to
	// 30 seconds later (consulready), and a test would wait in vain for a
	// service to pass.
	var last error
	if !PollUntil(60*time.Second, func() bool { last = a.ready(); return last == nil }) {
		t.Fatalf("consul not ready within 60s: %v", last)
	}
}

// BreakCatalogCopy gives the agent a token of its own that Consul does not
// know, as if read before its leader wrote the ACL tokens, and returns once
// the copy of its state to the catalog that this starts has failed: the
// agent then copies nothing more for 15 to 30 seconds, or until
// MendCatalogCopy. Its configuration must turn ACLs on and not keep tokens
// on disk (the agent would keep them in the test's directory).
func (a *ConsulAgent) BreakCatalogCopy(t testing.TB) {
	t.Helper()
	const failed = "failed to sync remote state"
	before := strings.Count(a.Output(), failed)
	a.setAgentToken(t, "5b0f3a38-8f3e-4d3c-9a4e-1c2d3e4f5a6b")
	Eventually(t, 10*time.Second, "the agent's copy to its catalog failed", func() bool { return strings.Count(a.Output(), failed) > before })
}

// MendCatalogCopy gives the agent its management token back, which has it
// copy its state to the catalog within seconds.
func (a *ConsulAgent) MendCatalogCopy(t testing.TB) {
	t.Helper()
	a.setAgentToken(t, a.token)
}

func (a *ConsulAgent) setAgentToken(t testing.TB, token string) {
	t.Helper()
	client, err := consul.NewClient(&consul.Config{Address: a.Addr, Scheme: "http", Token: a.token, HttpClient: a.client})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Agent().UpdateAgentACLToken(token, nil); err != nil {
		t.Fatalf("set the agent's token: %v", err)
	}
}

// ready is one consulready check of the agent.
func (a *ConsulAgent) ready() error {
	return consulready.Agent{Addr: a.Addr, Token: a.token, Client: a.client}.Check(context.Background())
}

// SyncBuffer collects a child process's output, written from several
// goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
