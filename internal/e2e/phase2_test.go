package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// stackProject is a project directory whose lucid.yaml runs the local
// stack with Consul and mTLS; the repository holds no payment tree, so the
// isolation policy requires none.
type stackProject struct {
	dir    string
	offset int
	env    []string
}

// lucidctl runs a command in the project. Every command addresses the
// project's own stack: a stack is known by its port offset, and status,
// logs or down without it would reach (or miss) another.
func (p *stackProject) lucidctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lucidctlBin, args...)
	cmd.Dir = p.dir
	cmd.Env = append(slices.Clip(p.env), "LUCID_LOCAL_PORT_OFFSET="+strconv.Itoa(p.offset))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("lucidctl %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

func (p *stackProject) offsetFlag() string { return "--port-offset=" + strconv.Itoa(p.offset) }

// servicePID reads a running service's pid from `status --json`.
func (p *stackProject) servicePID(t *testing.T, name string) int {
	out, _, _ := p.lucidctl(t, "status", "--json")
	var st struct {
		Services []struct {
			Name string
			PID  int
		}
	}
	_ = json.Unmarshal([]byte(out), &st)
	for _, s := range st.Services {
		if s.Name == name {
			return s.PID
		}
	}
	t.Fatalf("no %s in status: %s", name, out)
	return 0
}

// TestPhase2FullStack runs the whole stack as an operator would (`lucidctl
// up` with Consul and mTLS), validates it end to end, benchmarks it
// briefly, shows a slowed service in the right scenario, and stops it with
// nothing left running.
func TestPhase2FullStack(t *testing.T) {
	consul := testenv.Tool(t, "consul", "LUCID_CONSUL_BIN")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	p := &stackProject{dir: t.TempDir(), offset: 23000}
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte("isolation:\n  isolated_dirs: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.env = append(os.Environ(), "LUCID_BLOCK_INTERVAL=1s", "NO_COLOR=1")

	stopped := false
	down := func() {
		if !stopped {
			stopped = true
			p.lucidctl(t, "down")
		}
	}
	t.Cleanup(down) // before up: a half-started stack is stopped too
	if out, errOut, code := p.lucidctl(t, "up", "-d", "--lucid", lucidBin, "--consul", consul, p.offsetFlag()); code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	var pids []int
	out, _, _ := p.lucidctl(t, "status", "--json")
	var st struct {
		Services []struct{ PID int }
	}
	_ = json.Unmarshal([]byte(out), &st)
	for _, s := range st.Services {
		pids = append(pids, s.PID)
	}
	out, errOut, code := p.lucidctl(t, "validate", "phase2", p.offsetFlag(), "--source", repo)
	if code != 0 || strings.Count(out, "ok  ") != 7 {
		t.Fatalf("validate phase2: exit %d\n%s\n%s", code, out, errOut)
	}

	// The same checks against the stack as a deployed target: through SSH,
	// as the target itself sees its ports.
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	yml := fmt.Sprintf("isolation:\n  isolated_dirs: []\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n", sshd.Host, sshd.Port, sshd.User)
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = p.lucidctl(t, "validate", "phase2", "--target", "pi", "-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, p.offsetFlag(), "--source", repo)
	if code != 0 || strings.Count(out, "ok  ") != 7 {
		t.Fatalf("validate phase2 --target pi (through SSH): exit %d\n%s\n%s", code, out, errOut)
	}

	report := filepath.Join(t.TempDir(), "report")
	out, errOut, code = p.lucidctl(t, "bench", p.offsetFlag(), "--duration=2s", "--anchors=20", "--json", "--report", report)
	var res struct {
		Passed    bool
		Scenarios []struct {
			Name        string
			Error       string
			Skipped     string
			Metrics     map[string]float64
			FirstErrors map[string]string `json:"first_errors"`
			Checks      []struct {
				Metric string
				Pass   bool
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json: %v\n%s\n%s", err, out, errOut)
	}
	// Whether the Phase 2 targets are met depends on the machine (exit 0
	// or 3); what must hold is that every scenario ran, without errors.
	if (code != 0 && code != 3) || len(res.Scenarios) != 6 {
		t.Fatalf("bench: exit %d, %+v\n%s", code, res, errOut)
	}
	for _, s := range res.Scenarios {
		if s.Error != "" || s.Skipped != "" {
			t.Errorf("%s: error %q, skipped %q", s.Name, s.Error, s.Skipped)
		}
		for _, c := range s.Checks {
			if (c.Metric == "errors" || c.Metric == "receipts_verified") && !c.Pass {
				t.Errorf("%s: %s failed", s.Name, c.Metric)
			}
		}
		t.Logf("%s: %v", s.Name, s.Metrics)
	}
	if _, err := os.Stat(filepath.Join(report, "index.html")); err != nil {
		t.Errorf("no report: %v", err)
	}

	// Slow the block manager on purpose: stopped half of every 100 ms.
	blocks := p.servicePID(t, "blocks")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		half := time.NewTicker(50 * time.Millisecond)
		defer half.Stop()
		for stopped := false; ; stopped = !stopped {
			sig := syscall.SIGSTOP
			if stopped {
				sig = syscall.SIGCONT
			}
			_ = syscall.Kill(blocks, sig)
			select {
			case <-ctx.Done():
				return
			case <-half.C:
			}
		}
	}()
	out, _, code = p.lucidctl(t, "bench", p.offsetFlag(), "--duration=3s", "--anchors=5", "--scenarios=anchoring-throughput,query-latency", "--json")
	cancel()
	_ = syscall.Kill(blocks, syscall.SIGCONT)
	res.Scenarios = nil
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("slowed bench: %v\n%s", err, out)
	}
	m, why := map[string]float64{}, map[string]string{}
	for _, s := range res.Scenarios {
		for k, v := range s.Metrics {
			m[k] = v
		}
		for k, v := range s.FirstErrors {
			why[k] = v
		}
	}
	// The lookups the block manager serves miss: slow, or failed by the
	// gateway once its health checks take the stalled instance out. The
	// anchor lookups, served by session anchoring, keep working.
	slowed := func(kind string) bool { return m[kind+"_p95_ms"] >= 10 || m[kind+"_errors"] > 0 }
	if code != 3 || !slowed("block") || !slowed("proof") || m["anchor_errors"] != 0 {
		t.Errorf("slowed block manager: exit %d, metrics %v, first errors %v", code, m, why)
	}

	down()
	for _, pid := range pids {
		if testenv.ProcessAlive(pid) {
			t.Errorf("pid %d still running after down", pid)
		}
	}
}
