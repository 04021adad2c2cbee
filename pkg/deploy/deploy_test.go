package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/sshx"
)

// The stack under test publishes its ports shifted, beside anything else
// on this host, and below the ephemeral range (32768 and up) that other
// tests' free ports come from.
const (
	portOffset = 21500
	imageName  = "lucid-deploytest/{service}"
	imageTag   = "t"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// fixture is a "Pi": a throwaway sshd on 127.0.0.1 whose Docker is this
// machine's Engine.
type fixture struct {
	sshd    *testenv.SSHD
	dir     string
	compose []byte
	envs    map[string][]byte
	routes  []byte
	// deploys counts the deploys the test has set up (options); the
	// clock of each runs that many seconds ahead of the real one.
	deploys atomic.Int64
	secrets []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.ExclusiveDocker(t)
	f := &fixture{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: filepath.Join(t.TempDir(), "production")}
	// The operator's route table: DESIGN.md's, and a public route to the
	// engine's own endpoints that only this table has.
	routes, err := routetable.Marshal(append(routetable.Default(), routetable.Route{Prefix: "/engine", Service: "engine", Strip: true, Public: true}))
	if err != nil {
		t.Fatal(err)
	}
	files, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: imageName, ImageTag: imageTag, NoConsul: true, PortOffset: portOffset, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	// As lucidctl deploy sends them to target "pi" (options): the
	// services' operator credentials bound to it.
	envs, err := deployfiles.BindOperatorCredentials(files.ServiceEnvs, files.EnvValues["LUCID_OPERATOR_TOKEN"], "pi")
	if err != nil {
		t.Fatal(err)
	}
	f.compose, f.envs, f.routes = files.Compose, envs, routes
	for _, k := range deployfiles.Secrets {
		f.secrets = append(f.secrets, files.EnvValues[k])
	}
	t.Cleanup(func() {
		// Whatever the test left, even without a current release.
		ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+ComposeProject).Output()
		for _, id := range strings.Fields(string(ids)) {
			_ = exec.Command("docker", "rm", "-f", "-v", id).Run()
		}
		vols, _ := exec.Command("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+ComposeProject).Output()
		for _, v := range strings.Fields(string(vols)) {
			_ = exec.Command("docker", "volume", "rm", v).Run()
		}
		list, _ := exec.Command("docker", "images", "--format", "{{.Repository}}:{{.Tag}}").Output()
		for _, ref := range strings.Fields(string(list)) {
			if strings.Contains(ref, "lucid-deploytest/") || strings.Contains(ref, "/lucid/") {
				_ = exec.Command("docker", "rmi", "-f", ref).Run()
			}
		}
	})
	return f
}

func (f *fixture) dial(t *testing.T) *sshx.Client {
	t.Helper()
	c, err := sshx.Dial(context.Background(), sshx.Target{Host: f.sshd.Host, Port: f.sshd.Port, User: f.sshd.User},
		sshx.Options{KeyFiles: []string{f.sshd.ClientKey}, KnownHosts: f.sshd.KnownHosts, NoAgent: true, ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// lucidBinary is the real lucid for amd64, built once.
func lucidBinary(t *testing.T) string {
	binOnce.Do(func() {
		binPath = filepath.Join(os.TempDir(), fmt.Sprintf("lucid-deploytest-%d", os.Getpid()))
		// A version of its own: the Engine may hold layers of earlier runs.
		version := fmt.Sprintf("v1.0.0-test.%d.%d", os.Getpid(), time.Now().UnixNano())
		binErr = imagebuild.Compile(context.Background(), imagebuild.CompileOptions{SourceDir: "../..", Platform: amd64, Out: binPath, Version: version, Commit: "test"})
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// brokenBinary exits at once: every service of its images fails.
func brokenBinary(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module broken\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Exit(3) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "lucid")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir, cmd.Env = dir, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the broken binary: %v\n%s", err, b)
	}
	return out
}

func images(t *testing.T, binary, version string) []imagebuild.Built {
	t.Helper()
	built, err := imagebuild.Assemble(context.Background(), imagebuild.Options{
		Binaries: map[string]string{amd64.String(): binary}, Platforms: []v1.Platform{amd64}, Base: imagebuild.BaseScratch,
		ImageName: imageName, Tag: imageTag, Version: version,
	})
	if err != nil {
		t.Fatal(err)
	}
	return built
}

// deployment is one deploy: the target's Config and what goes there.
type deployment struct {
	cfg Config
	b   Bundle
}

// options for a deploy. Its clock is the real one, a second further ahead
// for each deploy of the test: two deploys never share a second, so their
// release ids differ, and however often a deploy reads its clock, the host's
// clock stays within the skew a deploy accepts (a few seconds after a test's
// dozen deploys, not minutes).
func (f *fixture) options(c *sshx.Client, built []imagebuild.Built, events *[]Event) deployment {
	var mu sync.Mutex
	ahead := time.Duration(f.deploys.Add(1)) * time.Second
	return deployment{
		cfg: Config{
			Name: "pi", SSH: c, Dir: f.dir, ImageName: imageName, Tag: imageTag,
			MinFreeBytes: 64 << 20, HealthTimeout: 90 * time.Second,
			GatewayHostPort: 8080 + portOffset,
			Now:             func() time.Time { return time.Now().Add(ahead) },
			Reporter: ReporterFunc(func(e Event) {
				mu.Lock()
				defer mu.Unlock()
				*events = append(*events, e)
			}),
		},
		b: Bundle{Compose: f.compose, EnvFiles: f.envs, Routes: f.routes, Version: "test", Images: built},
	}
}

// runDeploy runs one deploy with a Deployer of its own.
func runDeploy(ctx context.Context, t *testing.T, o deployment) (*Result, error) {
	t.Helper()
	d, err := New(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	return d.Deploy(ctx, o.b)
}

func (f *fixture) gatewayHealthy() bool {
	code, _ := f.gatewayGet("/health")
	return code == http.StatusOK
}

// gatewayGet is GET path on the deployed gateway: the status and body.
func (f *fixture) gatewayGet(path string) (int, string) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", 8080+portOffset, path))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (f *fixture) current(t *testing.T) string {
	link, err := os.Readlink(filepath.Join(f.dir, "current"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(link)
}

// noSecrets checks that no event carries a secret value.
func (f *fixture) noSecrets(t *testing.T, events []Event) {
	t.Helper()
	for _, e := range events {
		for _, s := range f.secrets {
			if strings.Contains(e.Message, s) {
				t.Fatalf("event %s/%s carries a secret", e.Step, e.Status)
			}
		}
	}
}

// TestDeployEndToEnd: the first deploy sends the shared binary layer once
// and brings every service up healthy; a second deploy of the same images
// sends no layer; a broken release is rolled back and the previous one
// keeps serving; a connection cut mid-transfer leaves the host on its
// release, and the next deploy succeeds.
func TestDeployEndToEnd(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := images(t, lucidBinary(t), "v1")

	var events []Event
	res, err := runDeploy(ctx, t, f.options(f.dial(t), good, &events))
	if err != nil {
		t.Fatalf("first deploy: %v", err)
	}
	t.Logf("first deploy: %d layers, %d bytes over ssh", res.SentLayers, res.SentBytes)
	// The binary layer is new; the scratch base is the same bytes on every
	// run, so the Engine may have it from before. Either way, each layer
	// goes once for the six images.
	if res.SentLayers < 1 || res.SentLayers > 2 || res.SentLayers+res.KeptLayers != 2 {
		t.Errorf("first deploy sent %d layers and kept %d, want the binary layer sent once and two in all", res.SentLayers, res.KeptLayers)
	}
	if !f.gatewayHealthy() {
		t.Fatal("gateway not healthy after the first deploy")
	}
	first := f.current(t)
	// Each container's own env file, and never the operator's.
	for p := range f.envs {
		env, err := os.Stat(filepath.Join(f.dir, "releases", first, p))
		if err != nil || env.Mode().Perm() != 0o600 {
			t.Errorf("release env file %s: %v %v", p, err, env)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "releases", first, deployfiles.EnvPath)); err == nil {
		t.Errorf("the operator's env file %s was deployed", deployfiles.EnvPath)
	}
	// The route table went with the release, readable by the gateway's
	// user, and the gateway runs it.
	if rt, err := os.Stat(filepath.Join(f.dir, "releases", first, deployfiles.RoutesPath)); err != nil || rt.Mode().Perm() != 0o644 {
		t.Errorf("release route table: %v %v", err, rt)
	}
	if code, body := f.gatewayGet("/engine/health"); code != http.StatusOK || !strings.Contains(body, `"service":"engine"`) {
		t.Errorf("the route only the deployed table has: %d %s", code, body)
	}
	f.noSecrets(t, events)
	// The offset of the ports its stack publishes, by which a cluster
	// deploy reaches a host's voter API.
	pd, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	if off, err := pd.PortOffset(ctx); err != nil || off != portOffset {
		t.Errorf("port offset %d, %v; want %d", off, err, portOffset)
	}
	pd.Close()

	events = nil
	res, err = runDeploy(ctx, t, f.options(f.dial(t), good, &events))
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	t.Logf("redeploy: %d layers, %d bytes over ssh (configs and manifest only)", res.SentLayers, res.SentBytes)
	if res.SentLayers != 0 || res.KeptLayers != 2 {
		t.Errorf("redeploy of the same images sent %d layers (kept %d), want none", res.SentLayers, res.KeptLayers)
	}
	second := f.current(t)
	if second == first {
		t.Fatal("the second deploy did not make a new release")
	}

	// While it goes back, the broken release is still deploying: cut off
	// there, a rollback would see a deploy cut short and bring the
	// current release back, not the one before it.
	events = nil
	bo := f.options(f.dial(t), images(t, brokenBinary(t), "broken"), &events)
	var whileBack []ReleaseStatus
	brokenReporter := bo.cfg.Reporter
	bo.cfg.Reporter = ReporterFunc(func(e Event) {
		if e.Step == StepRollback && e.Status == EventStart {
			whileBack = append(whileBack, newestRelease(t, f.dir).Status)
		}
		brokenReporter.Event(e)
	})
	_, err = runDeploy(ctx, t, bo)
	if !slices.Equal(whileBack, []ReleaseStatus{ReleaseDeploying}) {
		t.Errorf("the broken release's status on the way back: %v, want %s", whileBack, ReleaseDeploying)
	}
	if r := newestRelease(t, f.dir); r.Status != ReleaseFailed {
		t.Errorf("the broken release back: %s, want %s", r.Status, ReleaseFailed)
	}
	var rb *RolledBackError
	if !errors.As(err, &rb) || rb.Previous != second {
		t.Fatalf("broken deploy: %v, want a rollback to %s", err, second)
	}
	var gf *GateFailure
	if !errors.As(err, &gf) || len(gf.Services) == 0 {
		t.Errorf("the failure does not name the failing services: %v", err)
	}
	if f.current(t) != second || !f.gatewayHealthy() {
		t.Fatalf("after the rollback: current %s, gateway healthy %v", f.current(t), f.gatewayHealthy())
	}
	f.noSecrets(t, events)

	// A new binary (another version) means a layer to send; cut the
	// connection as soon as bytes flow.
	cutImages := images(t, buildVersion(t, "v1.0.1-cut"), "v1.0.1")
	c := f.dial(t)
	o := f.options(c, cutImages, &events)
	var cut sync.Once
	inner := o.cfg.Reporter
	o.cfg.Reporter = ReporterFunc(func(e Event) {
		inner.Event(e)
		if e.Step == "images" && e.Bytes > 0 {
			cut.Do(func() { f.sshd.KillSessions(t) })
		}
	})
	if _, err := runDeploy(ctx, t, o); err == nil {
		t.Fatal("a deploy whose connection was cut succeeded")
	}
	if f.current(t) != second || !f.gatewayHealthy() {
		t.Fatalf("after the cut: current %s, gateway healthy %v", f.current(t), f.gatewayHealthy())
	}
	// The cut deploy's lock outlives it: the next deploy is refused until
	// the lock expires (taking over an expired one is tested on its own)
	// or, here, is removed.
	o = f.options(f.dial(t), cutImages, &events)
	if _, err := runDeploy(ctx, t, o); err == nil || !errors.Is(err, ErrLocked) {
		t.Fatalf("deploy while the cut deploy's lock is live: %v, want ErrLocked", err)
	}
	if _, err := exec.Command("rm", "-f", filepath.Join(f.dir, ".deploy.lock")).CombinedOutput(); err != nil {
		t.Fatal(err)
	}
	if _, err := runDeploy(ctx, t, f.options(f.dial(t), cutImages, &events)); err != nil {
		t.Fatalf("deploy after the cut: %v", err)
	}
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rs, err := d.Releases(ctx)
	// first, second, the broken one (failed) and this one; the cut deploy
	// never wrote a release.
	if err != nil || len(rs) != 4 || !rs[0].Current || rs[0].Status != ReleaseLive || rs[1].Status != ReleaseFailed {
		t.Fatalf("releases after it all: %+v %v", rs, err)
	}

	// A rollback skips the failed release, goes back to the newest that
	// went live, through the same activation, and records both.
	last := rs[0].ID
	events = nil
	rd, err := New(f.options(f.dial(t), nil, &events).cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	rbRes, err := rd.Rollback(ctx, "", nil)
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if rbRes.Release != second || rbRes.Replaced != last || f.current(t) != second || !f.gatewayHealthy() {
		t.Fatalf("rollback: %+v, current %s, gateway healthy %v; want %s replacing %s", rbRes, f.current(t), f.gatewayHealthy(), second, last)
	}
	rs, err = rd.Releases(ctx)
	if err != nil || rs[0].Status != ReleaseReplaced || rs[2].ID != second || rs[2].Status != ReleaseLive || !rs[2].Current {
		t.Errorf("releases after the rollback: %+v %v", rs, err)
	}
	var steps []string
	for _, e := range events {
		steps = append(steps, string(e.Step)+"/"+string(e.Status))
	}
	// The secrets are checked as for a deploy. Without an operator token
	// the caught-up gate cannot ask the engine, and says so.
	if want := "preflight/start preflight/ok lock/start lock/ok secrets/start secrets/ok rollback/start up/start up/ok health/start health/ok caught-up/warn activate/ok rollback/ok"; strings.Join(steps, " ") != want {
		t.Errorf("rollback events %s, want %s", strings.Join(steps, " "), want)
	}
	f.noSecrets(t, events)

	// A rollback whose target fails its gate (here the broken release,
	// named) has replaced the current release's containers: the current
	// release comes back, rather than leave nothing serving.
	broken := rs[1].ID
	_, err = rd.Rollback(ctx, broken, nil)
	if !errors.As(err, &rb) || rb.Release != broken || rb.Previous != second {
		t.Fatalf("rollback to the broken release: %v, want a return to %s", err, second)
	}
	if f.current(t) != second || !f.gatewayHealthy() {
		t.Fatalf("after the failed rollback: current %s, gateway healthy %v", f.current(t), f.gatewayHealthy())
	}
	rs, err = rd.Releases(ctx)
	if err != nil || rs[1].ID != broken || rs[1].Status != ReleaseFailed || rs[2].ID != second || rs[2].Status != ReleaseLive || !rs[2].Current {
		t.Errorf("releases after the failed rollback: %+v %v", rs, err)
	}

	// A deploy cut off after writing its release (the connection lost
	// during its gate) leaves it deploying, newer than current, its
	// containers perhaps running: a plain rollback brings the current
	// release back, not the one before it, and records the cut one failed.
	const cutID = "29991231T000000Z-cut"
	copyRelease(t, filepath.Join(f.dir, "releases", second), filepath.Join(f.dir, "releases", cutID), cutID, ReleaseDeploying)
	rbRes, err = rd.Rollback(ctx, "", nil)
	if err != nil || rbRes.Release != second || rbRes.Replaced != cutID || f.current(t) != second || !f.gatewayHealthy() {
		t.Fatalf("rollback after a cut deploy: %+v %v, current %s; want %s back in place of %s", rbRes, err, f.current(t), second, cutID)
	}
	rs, err = rd.Releases(ctx)
	if err != nil || rs[0].ID != cutID || rs[0].Status != ReleaseFailed {
		t.Errorf("releases after the rollback past a cut deploy: %+v %v", rs, err)
	}
}

// copyRelease makes release id at to, a copy of the release at from,
// recorded with status.
func copyRelease(t *testing.T, from, to, id string, status ReleaseStatus) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(to, releaseRecord))
	if err != nil {
		t.Fatal(err)
	}
	var r Release
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	r.ID, r.Status = id, status
	if data, err = json.Marshal(r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(to, releaseRecord), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// newestRelease is the record of the newest release in the host's
// directory dir.
func newestRelease(t *testing.T, dir string) Release {
	t.Helper()
	ids, err := os.ReadDir(filepath.Join(dir, "releases"))
	if err != nil || len(ids) == 0 {
		t.Fatalf("releases: %v %v", ids, err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "releases", ids[len(ids)-1].Name(), releaseRecord)) // ReadDir sorts; ids sort by time
	if err != nil {
		t.Fatal(err)
	}
	var r Release
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// buildVersion is lucid stamped with another version: a new binary layer.
func buildVersion(t *testing.T, version string) string {
	out := filepath.Join(t.TempDir(), "lucid")
	if err := imagebuild.Compile(context.Background(), imagebuild.CompileOptions{SourceDir: "../..", Platform: amd64, Out: out, Version: version, Commit: "test"}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPreflightRefusals: each refusal comes before anything changes.
func TestPreflightRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := images(t, lucidBinary(t), "v1")
	var events []Event
	for name, tc := range map[string]struct {
		mutate func(*deployment)
		want   error
	}{
		"no docker":         {func(o *deployment) { o.cfg.DockerSocket = "/nonexistent/docker.sock" }, ErrNoDocker},
		"wrong arch":        {func(o *deployment) { o.b.Images = armImages(t) }, ErrArchitecture},
		"disk too full":     {func(o *deployment) { o.cfg.MinFreeBytes = 1 << 60 }, ErrDiskFull},
		"clock out of step": {func(o *deployment) { o.cfg.Now = func() time.Time { return time.Now().Add(time.Hour) } }, ErrClockSkew},
	} {
		t.Run(name, func(t *testing.T) {
			o := f.options(f.dial(t), good, &events)
			tc.mutate(&o)
			if _, err := runDeploy(ctx, t, o); !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(f.dir, "releases")); !errors.Is(err, os.ErrNotExist) {
				t.Error("a refused deploy wrote a release")
			}
		})
	}
	t.Run("an expired lock is taken over", func(t *testing.T) {
		h := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
		long := time.Now().Add(-2 * time.Hour)
		if err := h.lock(ctx, lockInfo{Host: "gone", PID: 7, User: "crashed", Since: long, Expires: long.Add(time.Hour)}, 0, func(string) {}); err != nil {
			t.Fatal(err)
		}
		var said []string
		me := lockInfo{Host: "here", PID: 8, User: "me", Since: time.Now(), Expires: time.Now().Add(time.Hour)}
		if err := h.lock(ctx, me, 0, func(m string) { said = append(said, m) }); err != nil {
			t.Fatalf("an expired lock was not taken over: %v", err)
		}
		defer unlockT(t, ctx, h)
		if len(said) != 1 || !strings.Contains(said[0], "taking over a stale lock of crashed@gone") {
			t.Errorf("notices %q", said)
		}
	})
	t.Run("a second deploy at once", func(t *testing.T) {
		c := f.dial(t)
		h := &host{name: "pi", ssh: c, dir: f.dir}
		if err := h.lock(ctx, lockInfo{Host: "elsewhere", PID: 1, User: "other", Since: time.Now(), Expires: time.Now().Add(time.Hour)}, 0, func(string) {}); err != nil {
			t.Fatal(err)
		}
		defer unlockT(t, ctx, h)
		o := f.options(c, good, &events)
		_, err := runDeploy(ctx, t, o)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "other@elsewhere") {
			t.Fatalf("%v, want ErrLocked naming the holder", err)
		}
	})
}

func armImages(t *testing.T) []imagebuild.Built {
	arm := v1.Platform{OS: "linux", Architecture: "arm64"}
	out := filepath.Join(t.TempDir(), "lucid")
	if err := imagebuild.Compile(context.Background(), imagebuild.CompileOptions{SourceDir: "../..", Platform: arm, Out: out, Version: "v1", Commit: "test"}); err != nil {
		t.Fatal(err)
	}
	built, err := imagebuild.Assemble(context.Background(), imagebuild.Options{
		Binaries: map[string]string{arm.String(): out}, Platforms: []v1.Platform{arm}, Base: imagebuild.BaseScratch, ImageName: imageName, Tag: imageTag,
	})
	if err != nil {
		t.Fatal(err)
	}
	return built
}

// TestDeployViaRegistry sends the images through a registry the host's
// Engine pulls from, instead of over the SSH connection.
func TestDeployViaRegistry(t *testing.T) {
	f := newFixture(t)
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	var events []Event
	o := f.options(f.dial(t), images(t, lucidBinary(t), "v1"), &events)
	o.cfg.ViaRegistry, o.cfg.InsecureRegistry = strings.TrimPrefix(reg.URL, "http://")+"/lucid", true
	res, err := runDeploy(context.Background(), t, o)
	if err != nil {
		t.Fatalf("deploy via a registry: %v", err)
	}
	if res.SentLayers != 0 || !f.gatewayHealthy() {
		t.Errorf("sent %d layers over ssh, gateway healthy %v", res.SentLayers, f.gatewayHealthy())
	}
}

// TestLockIsKeptWhileTheDeployRuns: a deploy that outlives the lock's TTL
// keeps renewing it, so a second deploy is refused rather than taking it
// over halfway; a lock taken from under it is reported and left alone.
func TestLockIsKeptWhileTheDeployRuns(t *testing.T) {
	f := &fixture{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: filepath.Join(t.TempDir(), "production")}
	ctx := context.Background()
	lockFile := filepath.Join(f.dir, ".deploy.lock")
	expires := func() time.Time {
		var l lockInfo
		data, _ := os.ReadFile(lockFile)
		_ = json.Unmarshal(data, &l)
		return l.Expires
	}
	other := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	refused := func() bool {
		err := other.lock(ctx, lockInfo{Host: "there", PID: 2, User: "other", Since: time.Now(), Expires: time.Now().Add(time.Hour)}, 0, func(string) {})
		if err == nil {
			unlockT(t, ctx, other)
		}
		return errors.Is(err, ErrLocked)
	}

	// A renewal makes a lock that had run out live again.
	mine := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	past := time.Now().Add(-time.Minute)
	if err := mine.lock(ctx, lockInfo{Host: "here", PID: 1, User: "me", Since: past, Expires: past}, 0, func(string) {}); err != nil {
		t.Fatal(err)
	}
	if err := mine.renewLock(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !refused() {
		t.Fatal("a second deploy took over a renewed lock")
	}
	unlockT(t, ctx, mine)

	// holdLock renews by itself, and release removes the lock.
	// A renewal gets ttl/3 to finish: room for an SSH session that starts
	// slowly (a busy machine, a heavy shell profile), and the first one is
	// still due within seconds.
	const ttl = 9 * time.Second
	held, release, _, err := mine.holdLock(ctx, lockInfo{Host: "here", PID: 1, User: "me"}, 0, ttl, time.Now, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	first := expires()
	testenv.Eventually(t, 20*time.Second, "the lock renewed", func() bool { return expires().After(first) })
	if err := release(); err != nil {
		t.Errorf("release: %v", err)
	}
	if held.Err() == nil {
		t.Error("the deploy's context outlived its lock")
	}
	if _, err := os.Stat(lockFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the lock outlived its deploy: %v", err)
	}

	// Taken over from under the deploy: the renewal says so, and the
	// deploy does not remove the new holder's lock.
	if err := mine.lock(ctx, lockInfo{Host: "here", PID: 1, User: "me", Since: time.Now(), Expires: time.Now().Add(time.Hour)}, 0, func(string) {}); err != nil {
		t.Fatal(err)
	}
	theirs := []byte(`{"host":"there","user":"other","nonce":"0123"}` + "\n")
	if err := os.WriteFile(lockFile, theirs, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := mine.renewLock(ctx, time.Now().Add(time.Hour)); !errors.Is(err, errLockTaken) {
		t.Errorf("renewing a lock taken over: %v", err)
	}
	if err := mine.unlock(ctx); !errors.Is(err, errLockTaken) {
		t.Errorf("unlocking a lock taken over: %v; want it to say the lock was taken", err)
	}
	if got, _ := os.ReadFile(lockFile); string(got) != string(theirs) {
		t.Errorf("the other deploy's lock became %q", got)
	}

	// A deploy whose lock is taken from under it is stopped: its context
	// ends, naming why.
	if err := os.Remove(lockFile); err != nil {
		t.Fatal(err)
	}
	held, release, _, err = mine.holdLock(ctx, lockInfo{Host: "here", PID: 1, User: "me"}, 0, ttl, time.Now, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(lockFile, theirs, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Done():
	case <-time.After(2 * ttl):
		t.Fatal("the deploy went on after its lock was taken")
	}
	if cause := context.Cause(held); !errors.Is(cause, errLockTaken) {
		t.Errorf("the deploy stopped for %v, want errLockTaken", cause)
	}
	if err := release(); !errors.Is(err, errLockTaken) {
		t.Errorf("release after the lock was taken: %v", err)
	}
	if got, _ := os.ReadFile(lockFile); string(got) != string(theirs) {
		t.Errorf("the other deploy's lock became %q", got)
	}
}

// unlockT releases a deploy lock the test holds, failing the test if the
// release fails.
func unlockT(t *testing.T, ctx context.Context, h *host) {
	t.Helper()
	if err := h.unlock(ctx); err != nil {
		t.Errorf("unlock: %v", err)
	}
}
