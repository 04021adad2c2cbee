package stack_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root/roottest"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/routetable"
)

// lucidBin is the lucid binary the tests supervise, built once.
var lucidBin string

// TestMain builds lucid, and makes the test binary act as lucidctl when `up
// -d` starts it again as the background supervisor.
func TestMain(m *testing.M) { roottest.Main(m, testenv.BuildLucid, &lucidBin) }

// project is a scratch project directory with its own lucid.yaml.
type project struct {
	t      *testing.T
	dir    string
	config string
	offset int
}

func newProject(t *testing.T, offset int) *project {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the end-to-end stack tests use Unix signals")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "lucid.yaml")
	// The port offset names the stack, so status, logs and down address
	// it without a flag.
	yaml := fmt.Sprintf("local:\n  state_dir: state\n  env_file: secrets.env\n  consul: \"off\"\n  port_offset: %d\n", offset)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &project{t: t, dir: dir, config: cfg, offset: offset}
	t.Cleanup(func() { p.lucidctl(context.Background(), "down") })
	return p
}

type result struct {
	code        int
	out, errOut string
}

func (p *project) lucidctl(ctx context.Context, args ...string) result {
	p.t.Helper()
	io, _, out, errOut := iostreams.Test()
	full := append([]string{"--config", p.config}, args...)
	code := root.Execute(ctx, full, io, os.Getenv)
	return result{code, out.String(), errOut.String()}
}

func (p *project) up(args ...string) result {
	p.t.Helper()
	base := []string{"up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset), "--wait-timeout", "60s"}
	r := p.lucidctl(context.Background(), append(base, args...)...)
	if r.code != 0 {
		p.t.Fatalf("up: exit %d\nstdout:\n%s\nstderr:\n%s\nsupervisor log:\n%s", r.code, r.out, r.errOut, p.read(p.state("logs/supervisor.log")))
	}
	return r
}

// state is rel in the state directory of the project's stack.
func (p *project) state(rel string) string {
	return fmt.Sprintf("state/offset-%d/%s", p.offset, rel)
}

func (p *project) write(rel, data string) {
	p.t.Helper()
	path := filepath.Join(p.dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *project) read(rel string) string {
	b, _ := os.ReadFile(filepath.Join(p.dir, rel))
	return string(b)
}

type statusJSON struct {
	Running       bool      `json:"running"`
	Discovery     string    `json:"discovery"`
	SupervisorPID int       `json:"supervisor_pid"`
	Services      []svcJSON `json:"services"`
}

type svcJSON struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	PID      int    `json:"pid"`
	Restarts int    `json:"restarts"`
	URL      string `json:"url"`
	LastExit string `json:"last_exit"`
}

func (p *project) status() (statusJSON, result) {
	p.t.Helper()
	r := p.lucidctl(context.Background(), "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(r.out), &st); err != nil {
		p.t.Fatalf("status --json printed something that is not JSON: %v\n%q", err, r.out)
	}
	return st, r
}

func (st statusJSON) service(name string) svcJSON {
	for _, s := range st.Services {
		if s.Name == name {
			return s
		}
	}
	return svcJSON{}
}

func TestUpStatusLogsDown(t *testing.T) {
	p := newProject(t, 20000)
	// The project's route table: DESIGN.md's, and a public route to the
	// engine's own endpoints that only this table has.
	p.write(deployfiles.RoutesPath, "routes:\n  - prefix: /engine\n    service: engine\n    strip: true\n    public: true\n"+
		strings.TrimPrefix(mustMarshal(t, routetable.Default()), "routes:\n"))
	// A state directory an older lucidctl made open to all is tightened.
	if err := os.MkdirAll(filepath.Join(p.dir, p.state("logs")), 0o755); err != nil {
		t.Fatal(err)
	}
	r := p.up()
	for _, s := range catalog.Services {
		if !strings.Contains(r.out, s.Name) {
			t.Errorf("up -d table lacks %s:\n%s", s.Name, r.out)
		}
	}
	// The lock that names the supervisor (what down signals), the state
	// and the logs are the operator's alone.
	for rel, want := range map[string]os.FileMode{".": 0o700, "logs": 0o700, "supervisor.lock": 0o600, "logs/stack.log": 0o600, "logs/supervisor.log": 0o600, "logs/gateway.log": 0o600} {
		if fi, err := os.Stat(filepath.Join(p.dir, p.state(rel))); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), want)
		}
	}

	// The generated secret is in the env file, private, and usable.
	fi, err := os.Stat(filepath.Join(p.dir, "secrets.env"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file: %v, mode %v", err, fi.Mode().Perm())
	}
	vars, err := envfile.Read(filepath.Join(p.dir, "secrets.env"))
	if err != nil || len(vars["JWT_SECRET_KEY"]) != 48 {
		t.Fatalf("JWT_SECRET_KEY not generated: %v", err)
	}
	if tok := p.lucidctl(context.Background(), "token"); tok.code != 0 || strings.Count(tok.out, ".") != 2 {
		t.Errorf("token from the generated env file: exit %d %q %q", tok.code, tok.out, tok.errOut)
	}
	// Each process holds only its own secrets: the gateway no encryption
	// or mesh token of another's, nobody the operator token or the mesh
	// token but the controller.
	st, _ := p.status()
	for _, svc := range catalog.Services {
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.service(svc.Name).PID))
		if err != nil {
			continue // not Linux
		}
		for k, v := range vars {
			if v == "" || svc.Reads(k) && (k != "LUCID_MESH_TOKEN" || svc.Name == catalog.MeshService) {
				continue
			}
			if strings.Contains(string(environ), "="+v+"\x00") {
				t.Errorf("%s holds %s, which is not its own", svc.Name, k)
			}
		}
	}

	// status --json: only JSON, with the stable fields.
	r = p.lucidctl(context.Background(), "status", "--json")
	if r.code != 0 {
		t.Fatalf("status: exit %d %s", r.code, r.errOut)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.out), &raw); err != nil {
		t.Fatalf("status --json stdout is not JSON: %q", r.out)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for key := range m {
			k = append(k, key)
		}
		slices.Sort(k)
		return k
	}
	if got := strings.Join(keys(raw), ","); got != "discovery,running,services,started_at,supervisor_pid,updated_at" {
		t.Errorf("status --json fields = %s", got)
	}
	for _, s := range raw["services"].([]any) {
		for _, k := range keys(s.(map[string]any)) {
			if !slices.Contains([]string{"name", "state", "pid", "restarts", "since", "last_exit", "next_start", "url"}, k) {
				t.Errorf("unexpected service field %q", k)
			}
		}
	}
	st, _ = p.status()
	if !st.Running || len(st.Services) != len(catalog.Services) {
		t.Fatalf("status = %+v", st)
	}
	// With mTLS on (the default) the internal services serve TLS: health
	// endpoints to anyone, the rest only to a holder of a mesh
	// certificate. The gateway stays plain HTTP for clients and reaches
	// them over mTLS: blocks, behind it, follows the engine over mTLS too.
	gw := st.service("gateway")
	if !strings.HasPrefix(gw.URL, "http://") || !strings.HasPrefix(st.service("engine").URL, "https://") {
		t.Fatalf("URLs gateway %s, engine %s: want the gateway plain, the rest https", gw.URL, st.service("engine").URL)
	}
	resp, err := http.Get(gw.URL + "/health")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("gateway /health: %v", err)
	}
	resp.Body.Close()
	resp, err = http.Get(gw.URL + "/engine/health")
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || !strings.Contains(string(body), `"service":"engine"`) {
		t.Errorf("the project's own route: %s %s", resp.Status, body)
	}
	resp.Body.Close()
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err = noCert.Get(st.service("engine").URL + "/api/v1/chain")
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("engine API without a mesh certificate: %v %v, want 403", resp, err)
	}
	resp.Body.Close()
	tok := p.lucidctl(context.Background(), "token")
	req, _ := http.NewRequest(http.MethodGet, gw.URL+"/api/v1/chain/status", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(tok.out))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chain status through the gateway over mTLS: %s %s", resp.Status, body)
	}
	// lucidctl reaches the engine the same way, through the gateway.
	if v := p.lucidctl(context.Background(), "verify", "chain", "--url", gw.URL+"/blockchain", "--token", strings.TrimSpace(tok.out)); v.code != 0 {
		t.Errorf("verify chain through the gateway: exit %d %s", v.code, v.errOut)
	}

	// A second up is refused while the first runs.
	if again := p.lucidctl(context.Background(), "up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset)); again.code == 0 || !strings.Contains(again.errOut, "already running") {
		t.Errorf("second up: exit %d %q", again.code, again.errOut)
	}

	// A service killed behind the supervisor's back is restarted.
	engine := st.service("engine")
	if err := syscall.Kill(engine.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "engine restarted", func() bool {
		st, _ := p.status()
		e := st.service("engine")
		return e.State == "ready" && e.Restarts == 1 && e.PID != engine.PID
	})
	if st, _ := p.status(); st.service("engine").LastExit != "signal: killed" {
		t.Errorf("engine last exit = %q", st.service("engine").LastExit)
	}

	// A service that hangs (stopped, deadlocked) still runs: status asks
	// each ready one's /health and says so.
	anchoring := st.service("anchoring")
	if err := syscall.Kill(anchoring.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	hung, r := p.status()
	text := p.lucidctl(context.Background(), "status")
	_ = syscall.Kill(anchoring.PID, syscall.SIGCONT)
	if a := hung.service("anchoring"); a.State != "unresponsive" || r.code != 3 {
		t.Errorf("a stopped anchoring: state %q, exit %d; want unresponsive, 3", a.State, r.code)
	}
	if !strings.Contains(text.out, "anchoring is unresponsive: /health:") {
		t.Errorf("status text does not say why anchoring is unresponsive:\n%s", text.out)
	}
	if st, r := p.status(); st.service("anchoring").State != "ready" || r.code != 0 {
		t.Errorf("anchoring resumed: state %q, exit %d", st.service("anchoring").State, r.code)
	}

	logs := p.lucidctl(context.Background(), "logs", "engine")
	if logs.code != 0 || !strings.Contains(logs.out, `"msg":"serving"`) {
		t.Errorf("logs engine: exit %d %q", logs.code, logs.out)
	}
	merged := p.lucidctl(context.Background(), "logs", "--tail", "1000")
	if !strings.Contains(merged.out, "lucidctl  | engine exited (signal: killed)") {
		t.Errorf("merged logs lack the restart note:\n%s", merged.out)
	}
	if tail := p.lucidctl(context.Background(), "logs", "lucidctl", "--tail", "1"); strings.Count(tail.out, "\n") != 1 {
		t.Errorf("logs --tail 1 printed %q", tail.out)
	}

	// down stops everything, and status says so.
	st, _ = p.status()
	var pids []int
	for _, s := range st.Services {
		pids = append(pids, s.PID)
	}
	if d := p.lucidctl(context.Background(), "down"); d.code != 0 {
		t.Fatalf("down: exit %d %s", d.code, d.errOut)
	}
	for _, pid := range pids {
		if testenv.ProcessAlive(pid) {
			t.Errorf("service pid %d survived down", pid)
		}
	}
	// The supervisor lets go of its lock as it exits: down returns then,
	// the process ends a moment later.
	testenv.Eventually(t, 5*time.Second, "the supervisor gone after down", func() bool { return !testenv.ProcessAlive(st.SupervisorPID) })
	st, r = p.status()
	if st.Running || r.code != 3 {
		t.Errorf("status after down: running=%v exit %d", st.Running, r.code)
	}
	for _, s := range st.Services {
		if s.State != "stopped" {
			t.Errorf("%s is %s after down", s.Name, s.State)
		}
	}
}

func TestSupervisorKilledTakesServicesWithIt(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("children die with their parent only on Linux")
	}
	p := newProject(t, 20100)
	p.up("engine", "blocks")
	st, _ := p.status()
	if len(st.Services) != 3 { // and the mesh, for their certificates
		t.Fatalf("up engine blocks ran %d services", len(st.Services))
	}
	if err := syscall.Kill(st.SupervisorPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		testenv.Eventually(t, 5*time.Second, s.Name+" gone after kill -9 of the supervisor", func() bool { return !testenv.ProcessAlive(s.PID) })
	}
	// The kernel releases the supervisor's lock once its last thread has
	// exited, which may be a moment after its children got their signal.
	testenv.Eventually(t, 5*time.Second, "status says the stack is not running", func() bool {
		after, r := p.status()
		return !after.Running && r.code == 3
	})
}

func TestForegroundUpStopsOnInterrupt(t *testing.T) {
	p := newProject(t, 20200)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() {
		done <- p.lucidctl(ctx, "up", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset), "datachain")
	}()
	var pids []int
	testenv.Eventually(t, 30*time.Second, "foreground stack ready", func() bool {
		r := p.lucidctl(context.Background(), "status", "--json")
		if r.code != 0 {
			return false
		}
		var st statusJSON
		_ = json.Unmarshal([]byte(r.out), &st)
		pids = pids[:0]
		for _, s := range st.Services {
			if s.State != "ready" {
				return false
			}
			pids = append(pids, s.PID)
		}
		return len(pids) == 4 // datachain with anchoring and engine, and the mesh
	})
	cancel() // what Ctrl-C does
	r := <-done
	if !strings.Contains(r.errOut, "datachain | ") || !strings.Contains(r.errOut, "lucidctl  | datachain stopped") {
		t.Errorf("foreground output lacks prefixed service lines:\n%s", r.errOut)
	}
	for _, pid := range pids {
		if testenv.ProcessAlive(pid) {
			t.Errorf("pid %d survived the interrupt", pid)
		}
	}
}

func TestUpSupervisesConsul(t *testing.T) {
	consul := testenv.Tool(t, "consul", "LUCID_CONSUL_BIN")
	p := newProject(t, 21000)
	p.up("mesh", "--consul", consul)
	st, _ := p.status()
	c := st.service("consul")
	if c.State != "ready" || c.URL != "http://127.0.0.1:29500" {
		t.Fatalf("consul = %+v", c)
	}
	if st.Discovery != "consul" {
		t.Errorf("status says discovery %q, want consul", st.Discovery)
	}
	resp, err := http.Get(c.URL + "/v1/status/leader")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// mesh was pointed at the agent.
	environ, environErr := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.service("mesh").PID))
	if environErr == nil && !strings.Contains(string(environ), "CONSUL_PORT=29500\x00") {
		t.Errorf("mesh was not given CONSUL_PORT=29500")
	}
	// and registered itself there, with a passing check over mTLS. Consul
	// runs with ACLs: the management token (generated into the env file)
	// sees it, nobody without a token does, and no process but Consul's
	// and the controller's holds that token.
	secrets, err := envfile.Read(filepath.Join(p.dir, "secrets.env"))
	if err != nil || secrets[deployfiles.ConsulTokenKey] == "" {
		t.Fatalf("no Consul token in the env file: %v", err)
	}
	passing := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, c.URL+"/v1/health/service/mesh?passing=true", nil)
		if token != "" {
			req.Header.Set("X-Consul-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var entries []struct{ Service struct{ Tags []string } }
		_ = json.NewDecoder(resp.Body).Decode(&entries)
		if len(entries) == 1 && slices.Contains(entries[0].Service.Tags, "mtls") {
			return 1
		}
		return len(entries)
	}
	// Consul runs the check every second. An agent whose first copy of
	// its state to the catalog failed (on a loaded machine) shows the
	// result there only 15 to 30 seconds later; the wait ends on the event.
	if !testenv.PollUntil(45*time.Second, func() bool { return passing(secrets[deployfiles.ConsulTokenKey]) == 1 }) {
		req, _ := http.NewRequest(http.MethodGet, c.URL+"/v1/health/checks/mesh", nil)
		req.Header.Set("X-Consul-Token", secrets[deployfiles.ConsulTokenKey])
		checks := "unreadable"
		if resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			checks = string(b)
		}
		t.Fatalf("mesh not registered and passing in consul within 45s; its checks there: %s\nconsul's log ends:\n%s\nmesh's log ends:\n%s",
			checks, lastLines(p.read(p.state("logs/consul.log")), 30), lastLines(p.read(p.state("logs/mesh.log")), 30))
	}
	if n := passing(""); n != 0 {
		t.Errorf("an anonymous read of Consul found %d instances", n)
	}
	if environErr == nil && !strings.Contains(string(environ), deployfiles.ConsulTokenKey+"="+secrets[deployfiles.ConsulTokenKey]+"\x00") {
		t.Error("the controller was not given Consul's management token")
	}
	if cfg, err := os.Stat(filepath.Join(p.dir, p.state("consul-acl.json"))); err != nil || cfg.Mode().Perm() != 0o600 {
		t.Errorf("Consul's configuration: %v %v, want a 0600 file", cfg, err)
	}
}

// TestUpRefusesBrokenRouteTable: a route table the gateway would refuse
// stops up before anything starts, naming the file and line.
func TestUpRefusesBrokenRouteTable(t *testing.T) {
	p := newProject(t, 20400)
	p.write(deployfiles.RoutesPath, "routes:\n  - prefix: /x\n    service: nope\n")
	r := p.lucidctl(context.Background(), "up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset))
	if r.code != cli.ExitProblems || !strings.Contains(r.errOut, "routes.yaml:2") || !strings.Contains(r.errOut, `service "nope"`) {
		t.Errorf("exit %d, stderr %q", r.code, r.errOut)
	}
	if _, err := os.Stat(filepath.Join(p.dir, p.state("logs/supervisor.log"))); err == nil {
		t.Error("a supervisor started")
	}
}

func mustMarshal(t *testing.T, routes []routetable.Route) string {
	t.Helper()
	b, err := routetable.Marshal(routes)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestUpRefusesWeakSecret: a secret too short for its service stops up
// before anything starts, naming it without its value: one the stack
// needs, and one it can do without but was given (a short ENCRYPTION_KEY
// would fail the data chain five times over).
func TestUpRefusesWeakSecret(t *testing.T) {
	p := newProject(t, 20300)
	for key, value := range map[string]string{"JWT_SECRET_KEY": "short", "ENCRYPTION_KEY": "shrt2", "ENCRYPTION_PREVIOUS_KEYS": "c2hydDM"} {
		if err := os.WriteFile(filepath.Join(p.dir, "secrets.env"), []byte(key+"="+value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		r := p.lucidctl(context.Background(), "up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset))
		if r.code != 1 || !strings.Contains(r.errOut, key+" from") || !strings.Contains(r.errOut, "is 5 bytes") {
			t.Errorf("%s: exit %d, stderr %q", key, r.code, r.errOut)
		}
		if key == "ENCRYPTION_KEY" && strings.Contains(r.errOut, "generates a strong one") {
			t.Errorf("the hint for ENCRYPTION_KEY promises what up does not do: %q", r.errOut)
		}
		if strings.Contains(r.errOut, value) {
			t.Errorf("%s: the secret's value reached the error", key)
		}
		if _, err := os.Stat(filepath.Join(p.dir, p.state("logs/supervisor.log"))); err == nil {
			t.Errorf("%s: a supervisor started", key)
		}
	}
}

// TestUpRefusesTakenPort: a port of the stack that another program holds
// (another stack whose offset overlaps, say) stops up before anything
// starts: whoever answers there would pass for the service.
func TestUpRefusesTakenPort(t *testing.T) {
	p := newProject(t, 20600)
	engine, _ := catalog.Lookup("engine")
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(engine.Port+p.offset))
	if err != nil {
		t.Skipf("the port is not free to take: %v", err)
	}
	defer ln.Close()
	r := p.lucidctl(context.Background(), "up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset))
	want := fmt.Sprintf("port %d (engine's) already in use", engine.Port+p.offset)
	if r.code != 1 || !strings.Contains(r.errOut, want) {
		t.Errorf("exit %d, stderr %q; want %q", r.code, r.errOut, want)
	}
	if _, err := os.Stat(filepath.Join(p.dir, p.state("logs/supervisor.log"))); err == nil {
		t.Error("a supervisor started")
	}
}

// TestGatewayRunsWithAFailedService: a service that cannot start (a
// setting out of its range fails the data chain) is marked failed, and the gateway,
// which starts after the services it routes to, starts all the same and
// is ready: the other routes work, and the failed one's answer 503.
func TestGatewayRunsWithAFailedService(t *testing.T) {
	p := newProject(t, 20700)
	if err := os.WriteFile(filepath.Join(p.dir, "secrets.env"), []byte("LUCID_CHUNK_MIN_BYTES=0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := p.lucidctl(context.Background(), "up", "-d", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset), "--wait-timeout", "60s")
	if r.code != 1 || !strings.Contains(r.errOut, "datachain") {
		t.Errorf("up with a service that cannot start: exit %d, stderr %q", r.code, r.errOut)
	}
	var gw svcJSON
	testenv.Eventually(t, 90*time.Second, "the gateway ready beside the failed data chain", func() bool {
		st, _ := p.status()
		gw = st.service("gateway")
		return gw.State == "ready" && st.service("datachain").State == "failed"
	})
	tok := p.lucidctl(context.Background(), "token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: exit %d %s", tok.code, tok.errOut)
	}
	for path, want := range map[string]int{"/api/v1/sessions/s1": http.StatusServiceUnavailable, "/blockchain/api/v1/chain": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodGet, gw.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(tok.out))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s beside the failed data chain: %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestForegroundUpOutlivesABrokenPipe: a foreground up whose stderr is a
// pipe that closes (`up | tee`, and Ctrl-C ends tee too) still stops its
// services in order on the interrupt and exits 0, rather than die of
// SIGPIPE at its next line and leave them killed.
func TestForegroundUpOutlivesABrokenPipe(t *testing.T) {
	p := newProject(t, 20800)
	cmd := exec.Command(os.Args[0], "--config", p.config, "up", "--lucid", lucidBin, "--port-offset", strconv.Itoa(p.offset), "datachain")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, stderr); close(drained) }()
	testenv.Eventually(t, 30*time.Second, "the foreground stack ready", func() bool {
		st, r := p.status()
		return r.code == 0 && st.service("datachain").State == "ready"
	})
	_ = stderr.Close() // tee is gone
	<-drained
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("up with its stderr closed, interrupted: %v (exit %d), want exit 0", err, code)
	}
	if log := p.read(p.state("logs/stack.log")); !strings.Contains(log, "lucidctl | datachain stopped") {
		t.Errorf("the services were not stopped in order; the stack log:\n%s", log)
	}
}

// lastLines is the end of a log, for a failure's message.
func lastLines(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
