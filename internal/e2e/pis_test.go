package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/internal/testenv/pis"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// reaches reports whether from (a Pi, or with probe a container on it)
// opens a TCP connection to to's sshd and reads its banner within 2 s: a
// partitioned peer's packets are dropped, so a cut shows as that timeout.
func reaches(ctx context.Context, from, to *pis.Pi, probe string) bool {
	args := []string{"timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/" + to.Addr + "/22 && head -c 4 <&3"}
	var out []byte
	var err error
	if probe != "" {
		out, err = from.Docker(ctx, append([]string{"exec", probe}, args...)...)
	} else {
		out, err = from.Exec(ctx, args...)
	}
	return err == nil && string(out) == "SSH-"
}

// conn is one connection a check expects to open or not.
type conn struct {
	from, to *pis.Pi
	probe    string // a container on from, or "" for the Pi itself
	open     bool
}

// checkPaths tries every path at once (a closed one costs its timeout)
// and reports those that are not as expected.
func checkPaths(t *testing.T, ctx context.Context, when string, paths ...conn) {
	t.Helper()
	got := make([]bool, len(paths))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = reaches(ctx, p.from, p.to, p.probe) }()
	}
	wg.Wait()
	for i, p := range paths {
		if got[i] != p.open {
			from := p.from.Name
			if p.probe != "" {
				from = p.probe + " on " + from
			}
			t.Errorf("%s: %s -> %s open=%v, want %v", when, from, p.to.Name, got[i], p.open)
		}
	}
}

// sshWorks reports whether this machine logs in to the Pi over SSH.
func sshWorks(ctx context.Context, pi *pis.Pi) bool {
	c, err := pi.SSH(ctx)
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Run(ctx, "true", nil)
	return err == nil
}

// startProbe runs a container on the Pi's own Engine (restart policy
// unless-stopped, as lucid's services have; ending on SIGTERM, as they
// do), from an image of the Pi's /usr made there, for connections from a
// Pi's containers.
func startProbe(t *testing.T, ctx context.Context, pi *pis.Pi, name string) {
	t.Helper()
	script := `set -e; d=$(mktemp -d); mkdir "$d/usr"; for l in bin lib lib64 sbin; do ln -s usr/$l "$d/$l"; done
tar -C "$d" -c . | docker import - lucid-probe >/dev/null
docker run -d --restart unless-stopped --name "$1" -v /usr:/usr:ro lucid-probe bash -c 'trap exit TERM; sleep infinity & wait' >/dev/null`
	if out, err := pi.Exec(ctx, "bash", "-c", script, "probe", name); err != nil {
		t.Fatalf("probe container on %s: %v\n%s", pi.Name, err, out)
	}
}

// containerRuns reports whether the Pi's container runs, and how often
// its Engine has restarted it.
func containerRuns(ctx context.Context, pi *pis.Pi, name string) (running bool, restarts int) {
	out, err := pi.Docker(ctx, "inspect", "-f", "{{.State.Running}} {{.RestartCount}}", name)
	if err != nil {
		return false, -1
	}
	_, _ = fmt.Sscanf(string(out), "%t %d", &running, &restarts)
	return running, restarts
}

// TestPisAreHostsOfTheirOwn proves the harness the cluster's fault tests
// stand on: three Pis, each its own host on one private network, reach
// each other by address; a partition cuts one off from the others (its
// containers too) while this machine still reaches it, and healing joins
// it again; a power cut and a clean shutdown take a whole Pi down, and a
// boot brings it and its containers back; a crashed container is
// restarted by its Pi's Engine.
func TestPisAreHostsOfTheirOwn(t *testing.T) {
	ctx := context.Background()
	began := time.Now()
	three := pis.Start(t, 3)
	t.Logf("3 Pis up in %s", time.Since(began).Round(time.Millisecond))
	for _, pi := range three {
		if m, err := pi.MemoryBytes(ctx); err != nil {
			t.Error(err)
		} else {
			t.Logf("%s (%s), idle: %d MiB", pi.Name, pi.Addr, m>>20)
		}
	}
	pi1, pi2, pi3 := three[0], three[1], three[2]
	startProbe(t, ctx, pi1, "probe1")

	// A server whose image no registry can give, made of this machine's
	// binary, on one Pi; another reaches it at its address.
	redis := pis.HostBinaryImage(t, "lucid-test/redis:host", []string{"redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"},
		testenv.Tool(t, "redis-server", "LUCID_REDIS_BIN"))
	if err := pi2.LoadImage(ctx, redis); err != nil {
		t.Fatal(err)
	}
	if out, err := pi2.Docker(ctx, "run", "-d", "--name", "redis", "-p", "6379:6379", "lucid-test/redis:host"); err != nil {
		t.Fatalf("redis on pi2: %v\n%s", err, out)
	}
	testenv.Eventually(t, 20*time.Second, "redis on pi2 answering pi1", func() bool {
		out, err := pi1.Exec(ctx, "timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+pi2.Addr+"/6379 && printf 'PING\\r\\n' >&3 && head -c 5 <&3")
		return err == nil && string(out) == "+PONG"
	})

	var all []conn
	for _, from := range three {
		for _, to := range three {
			if from != to {
				all = append(all, conn{from: from, to: to, open: true})
			}
		}
	}
	checkPaths(t, ctx, "at first", append(all, conn{pi1, pi3, "probe1", true})...)
	if out, err := pi1.Exec(ctx, "getent", "hosts", pi3.Name); err != nil || !strings.HasPrefix(string(out), pi3.Addr+" ") {
		t.Errorf("pi1 resolves %s as %q (%v), want %s", pi3.Name, out, err, pi3.Addr)
	}

	if err := pi3.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	checkPaths(t, ctx, "pi3 partitioned",
		conn{pi1, pi2, "", true}, conn{pi2, pi1, "", true},
		conn{pi1, pi3, "", false}, conn{pi3, pi1, "", false},
		conn{pi2, pi3, "", false}, conn{pi3, pi2, "", false},
		conn{pi1, pi3, "probe1", false})
	if !sshWorks(ctx, pi3) {
		t.Error("pi3 partitioned: this machine cannot log in to it")
	}
	if err := pi3.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	checkPaths(t, ctx, "healed", append(all, conn{pi1, pi3, "probe1", true})...)

	// A crash: the Engine restarts the container.
	if err := pi1.Kill(ctx, "probe1"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "probe1 restarted after its crash", func() bool {
		running, restarts := containerRuns(ctx, pi1, "probe1")
		return running && restarts == 1
	})

	// A power cut: the Pi is gone (its address too) until it boots, then
	// its containers come back.
	cut := time.Now()
	if err := pi1.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	if sshWorks(ctx, pi1) {
		t.Error("pi1 powered off: this machine still logs in to it")
	}
	checkPaths(t, ctx, "pi1 powered off", conn{pi2, pi1, "", false}, conn{pi2, pi3, "", true})
	if err := pi1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "probe1 running after the power came back", func() bool {
		running, _ := containerRuns(ctx, pi1, "probe1")
		return running
	})
	t.Logf("pi1 powered off and booted, its container back, in %s", time.Since(cut).Round(time.Millisecond))
	checkPaths(t, ctx, "pi1 booted", conn{pi2, pi1, "", true}, conn{pi1, pi2, "probe1", true})

	// A clean shutdown and a boot: the containers come back, and a
	// partition holds through the reboot, as a pulled cable does.
	if err := pi1.Partition(ctx, pi2); err != nil {
		t.Fatal(err)
	}
	stop := time.Now()
	if err := pi1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("pi1 shut down cleanly in %s", time.Since(stop).Round(time.Millisecond))
	if err := pi1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "probe1 running after the reboot", func() bool {
		running, _ := containerRuns(ctx, pi1, "probe1")
		return running
	})
	checkPaths(t, ctx, "pi1 rebooted, still cut from pi2",
		conn{pi1, pi2, "", false}, conn{pi2, pi1, "", false}, conn{pi1, pi2, "probe1", false},
		conn{pi1, pi3, "", true}, conn{pi3, pi1, "", true})
	if err := pi1.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	checkPaths(t, ctx, "pi1 healed", conn{pi1, pi2, "", true}, conn{pi2, pi1, "", true}, conn{pi1, pi2, "probe1", true})
}

// TestDeployToAPi deploys a release with `lucidctl deploy` to a Pi of the
// harness, over its sshd, into its own Docker Engine, Consul included
// (the hashicorp/consul image made from LUCID_CONSUL_BIN, loaded into the
// Pi as an operator would), and checks that its gateway answers on the
// Pi's address, and that the engine, crashed, is restarted by the Pi.
func TestDeployToAPi(t *testing.T) {
	ctx := context.Background()
	began := time.Now()
	pi := pis.Start(t, 1)[0]
	t.Logf("1 Pi up in %s", time.Since(began).Round(time.Millisecond))

	began = time.Now()
	consul := pis.ConsulImage(t)
	built := time.Since(began)
	began = time.Now()
	if err := pi.LoadImage(ctx, consul); err != nil {
		t.Fatal(err)
	}
	t.Logf("consul image: made (or found) in %s, loaded into the Pi in %s", built.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	p := &stackProject{dir: t.TempDir(), env: append(os.Environ(), "NO_COLOR=1")}
	yml := fmt.Sprintf("platforms: [linux/%s]\nimages:\n  name: lucid-e2e/lucid-{service}\n  tag: e2e\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: /srv/lucid\n",
		runtime.GOARCH, pi.Addr, pi.SSHPort, pi.User)
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	caCerts := filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(caCerts, []byte("e2e bundle\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ssh := []string{"-i", pi.ClientKey, "--known-hosts", pi.KnownHosts, "--no-agent"}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := p.lucidctl(t, args...)
		if code != 0 {
			t.Fatal(failedRun(args, code, out, errOut))
		}
		return out
	}
	run("render")
	began = time.Now()
	deployArgs := append([]string{"deploy", "pi", "--json", "--lucid", lucidBin, "--base", "scratch", "--ca-certs", caCerts, "--min-free", "16"}, ssh...)
	out, errOut, code := p.lucidctl(t, deployArgs...)
	if code != 0 {
		t.Fatal(failedRun(deployArgs, code, out, errOut))
	}
	t.Logf("deploy steps: %s", stepTimes(out))
	t.Logf("first deploy (images into the Pi's empty Engine, compose up, health gate) in %s", time.Since(began).Round(time.Millisecond))

	gateway := "http://" + pi.Addr + ":8080/health"
	healthy := func() bool {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(gateway)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	if !healthy() {
		t.Fatalf("%s does not answer 200 after the deploy", gateway)
	}
	var status struct {
		Hosts []struct{ Healthy bool }
	}
	if err := json.Unmarshal([]byte(run(append([]string{"status", "--target", "pi", "--json"}, ssh...)...)), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Hosts) != 1 || !status.Hosts[0].Healthy {
		t.Fatalf("status after the deploy: %+v", status)
	}

	// The same load as the cluster test's, for its figures' sake: one Pi
	// against three.
	secrets, err := envfile.Read(filepath.Join(p.dir, projectconfig.DefaultEnvFile))
	if err != nil {
		t.Fatal(err)
	}
	one := &piCluster{pis: []*pis.Pi{pi}, p: p, ssh: ssh, secrets: secrets, subject: "pi-e2e@example.org"}
	if one.token, _, err = auth.Mint([]byte(secrets["JWT_SECRET_KEY"]), auth.MintOptions{Subject: one.subject, Tier: auth.TierEnterprise, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	t.Logf("1 Pi, 12 clients: %s", one.measure(t, newChainReader(one), one.pis, 12))
	// The image's entrypoint did what the official one does with the
	// compose file's CONSUL_LOCAL_CONFIG: ACLs on.
	if out, err := pi.Docker(ctx, "cp", "lucid-consul:/consul/config/local.json", "-"); err != nil || !strings.Contains(string(out), `"acl"`) {
		t.Errorf("lucid-consul's /consul/config/local.json: %v\n%s", err, out)
	}
	if m, err := pi.MemoryBytes(ctx); err == nil {
		t.Logf("the Pi running the release: %d MiB", m>>20)
	}

	// From the Pi itself, through SSH, as a service published on its
	// loopback only (the others) is reached.
	onPi, conn, err := pi.HTTPClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	resp, err := onPi.Get("http://127.0.0.1:8080/health")
	if err != nil {
		t.Fatalf("the gateway's /health from the Pi: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the gateway's /health from the Pi: %s", resp.Status)
	}

	engine, _ := catalog.Lookup("engine")
	began = time.Now()
	if err := pi.Kill(ctx, engine.Container); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, "the engine restarted after its crash, the gateway healthy", func() bool {
		running, restarts := containerRuns(ctx, pi, engine.Container)
		return running && restarts >= 1 && healthy()
	})
	t.Logf("the engine crashed and ran again in %s", time.Since(began).Round(time.Millisecond))

	// A reboot: the Pi's Engine starts every container again (all at
	// once: depends_on is compose's, not the Engine's).
	began = time.Now()
	if err := pi.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(began)
	if err := pi.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 2*time.Minute, "the gateway healthy after a reboot", healthy)
	t.Logf("the Pi shut down in %s, and its gateway answered %s after the boot began", stopped.Round(time.Millisecond), (time.Since(began) - stopped).Round(time.Millisecond))
}

// failedRun says why a lucidctl run failed with its cause first: its
// stderr and the events that failed or warned, then the whole stdout. A
// report that keeps only the head of a long failure still shows why.
func failedRun(args []string, code int, out, errOut string) string {
	var bad []string
	for _, line := range strings.Split(out, "\n") {
		var e struct{ Status string }
		if json.Unmarshal([]byte(line), &e) == nil && (e.Status == "fail" || e.Status == "warn") {
			bad = append(bad, line)
		}
	}
	return fmt.Sprintf("lucidctl %s: exit %d\nstderr:\n%s\nfailed or warned:\n%s\nstdout:\n%s",
		strings.Join(args, " "), code, errOut, strings.Join(bad, "\n"), out)
}

// stepTimes says how long each step of a deploy's --json events took.
func stepTimes(events string) string {
	var steps []string
	began := map[string]time.Time{}
	for _, line := range strings.Split(events, "\n") {
		var e struct {
			Time         time.Time
			Step, Status string
			Message      string
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Step == "" {
			continue
		}
		switch e.Status {
		case "start":
			began[e.Step] = e.Time
		case "ok":
			if t0, ok := began[e.Step]; ok {
				steps = append(steps, fmt.Sprintf("%s %s", e.Step, e.Time.Sub(t0).Round(time.Millisecond)))
				delete(began, e.Step)
			}
		}
	}
	return strings.Join(steps, ", ")
}
