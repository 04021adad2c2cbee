package observe_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/observe"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/cmd/lucidctl/internal/stack"
	"github.com/pickme/lucid/internal/testenv"
)

// deadPort is a loopback port nothing listens on: a Pi that is off.
func deadPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// project has targets pi1 (a real sshd, nothing deployed in its
// directory), pi2 (off), and the group fleet of both.
type project struct {
	sshd   *testenv.SSHD
	config string
}

func newProject(t *testing.T) *project {
	t.Helper()
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir := t.TempDir()
	yml := fmt.Sprintf("targets:\n  pi1:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n  pi2:\n    host: 127.0.0.1\n    port: %d\n    user: %s\n    dir: %s\ngroups:\n  fleet: [pi1, pi2]\n",
		s.Host, s.Port, s.User, filepath.Join(dir, "pi1"), deadPort(t), s.User, filepath.Join(dir, "pi2"))
	p := &project{sshd: s, config: filepath.Join(dir, "lucid.yaml")}
	if err := os.WriteFile(p.config, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type result struct {
	err         error
	code        int
	out, errOut string
}

// run runs `lucidctl NAME args...` (status or logs) in-process.
func (p *project) run(t *testing.T, json bool, name string, args ...string) result {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath, env.JSON = p.config, json
	var cmd *cobra.Command
	for _, c := range stack.NewCmds(env) {
		if c.Name() == name {
			cmd = c
		}
	}
	if name == "__complete" {
		cmd = root.NewCmd(env)
	}
	cmd.SetArgs(append(args, "-i", p.sshd.ClientKey, "--known-hosts", p.sshd.KnownHosts, "--no-agent"))
	if name == "__complete" {
		cmd.SetArgs(append([]string{"__complete"}, args...))
	}
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err := cmd.ExecuteContext(context.Background())
	r := result{err: err, code: cli.ExitCode(context.Background(), err), out: out.String(), errOut: errOut.String()}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s %v: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, r.out, r.errOut)
		}
	})
	return r
}

// TestStatusOfAFleetWithADeadHost: the dead host fails the command (exit
// 4) unless skipped; skipped, it is named, and the status exits 3. The
// live host has no release in its directory: it is reported unhealthy
// for that, whatever this machine's Docker runs.
func TestStatusOfAFleetWithADeadHost(t *testing.T) {
	p := newProject(t)

	if r := p.run(t, false, "status", "--target", "fleet"); r.code != cli.ExitAuth || !strings.Contains(r.err.Error(), "pi2") {
		t.Errorf("without --skip-unreachable: exit %d, %v", r.code, r.err)
	}

	r := p.run(t, true, "status", "--target", "fleet", "--skip-unreachable")
	if r.code != cli.ExitProblems {
		t.Fatalf("exit %d (%v), want 3", r.code, r.err)
	}
	var doc observe.StatusDoc
	if err := json.Unmarshal([]byte(r.out), &doc); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.out)
	}
	if doc.Healthy || len(doc.Hosts) != 2 {
		t.Fatalf("doc %+v", doc)
	}
	pi1, pi2 := doc.Hosts[0], doc.Hosts[1]
	if pi1.Target != "pi1" || !pi1.Reachable || pi1.HostStatus == nil || pi1.Healthy || !contains(pi1.Problems, "no current release") {
		t.Errorf("pi1: %+v", pi1)
	}
	if pi2.Target != "pi2" || pi2.Reachable || pi2.Error == "" || pi2.HostStatus != nil {
		t.Errorf("pi2: %+v", pi2)
	}
	// The documented shape: every host has these keys.
	var raw struct {
		Hosts []map[string]any `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(r.out), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"target", "reachable", "release", "services", "host", "reports", "problems", "healthy"} {
		if _, ok := raw.Hosts[0][k]; !ok {
			t.Errorf("pi1 has no %q in --json", k)
		}
	}

	r = p.run(t, false, "status", "--target", "fleet", "--skip-unreachable")
	if r.code != cli.ExitProblems || !strings.Contains(r.out, "pi2  unreachable (") || !strings.Contains(r.out, "pi1  UNHEALTHY  no current release") ||
		!strings.Contains(r.errOut, "skipped 1 unreachable host(s): pi2") {
		t.Errorf("text: exit %d", r.code)
	}
	for _, line := range []string{"SERVICE", "host:", "chain:", "anchoring:", "data chain:", "mesh certs:", "problem:"} {
		if !strings.Contains(r.out, line) {
			t.Errorf("the text has no %q", line)
		}
	}
}

// TestRemoteFlagsAreUsageErrors: the host flags need --target, the local
// stack's flags refuse it, and a deployed host has no supervisor log.
func TestRemoteFlagsAreUsageErrors(t *testing.T) {
	p := newProject(t)
	for _, args := range [][]string{
		{"status", "--hosts", "pi1"},
		{"status", "--skip-unreachable"},
		{"status", "--target", "fleet", "--port-offset", "1000"},
		{"status", "--target", "nas"},
		{"status", "--target", "fleet", "--hosts", "pi3"},
		{"logs", "--since", "10m"},
		{"logs", "--grep", "x"},
		{"logs", "engine", "gateway"},
		{"logs", "--target", "pi1", "lucidctl"},
		{"logs", "--target", "pi1", "nosuch"},
		{"logs", "--target", "pi1", "--grep", "("},
	} {
		if r := p.run(t, false, args[0], args[1:]...); r.code != cli.ExitUsage {
			t.Errorf("%v: exit %d (%v), want 2", args, r.code, r.err)
		}
	}
	if r := p.run(t, true, "logs"); r.code != cli.ExitUsage {
		t.Errorf("local logs --json: exit %d, want 2", r.code)
	}
}

// TestCompletions: --target and deploy-like TARGET arguments complete the
// targets and groups of lucid.yaml, --hosts the members of the group.
func TestCompletions(t *testing.T) {
	p := newProject(t)
	cfg := "--config=" + p.config
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", cfg, "status", "--target", ""}, []string{"fleet", "pi1", "pi2"}},
		{[]string{"__complete", cfg, "logs", "--target", "pi"}, []string{"pi1", "pi2"}},
		{[]string{"__complete", cfg, "status", "--target", "fleet", "--hosts", "pi1,"}, []string{"pi1,pi2"}},
		{[]string{"__complete", cfg, "logs", "--target", "pi1", "eng"}, []string{"engine"}},
		{[]string{"__complete", cfg, "deploy", "pi1", ""}, []string{"fleet", "pi2"}},
		{[]string{"__complete", cfg, "releases", "f"}, []string{"fleet"}},
		{[]string{"__complete", cfg, "rollback", ""}, []string{"fleet", "pi1", "pi2"}},
	} {
		r := p.run(t, false, "__complete", tc.args[1:]...)
		got := completions(r.out)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%v: %q, want %q", tc.args, got, tc.want)
		}
	}
}

// TestReleaseCompletion: rollback's RELEASE completes with the target's
// releases, asked over SSH (the "host" is this machine, so its deploy
// directory is written here), and completes nothing for a host that does
// not answer.
func TestReleaseCompletion(t *testing.T) {
	p := newProject(t)
	dir := filepath.Join(filepath.Dir(p.config), "pi1")
	for _, id := range []string{"20261201T100000Z-v1", "20261202T100000Z-v2"} {
		rd := filepath.Join(dir, "releases", id)
		if err := os.MkdirAll(rd, 0o755); err != nil {
			t.Fatal(err)
		}
		rec := fmt.Sprintf(`{"id":%q,"version":%q,"status":"live"}`, id, id[len(id)-2:])
		if err := os.WriteFile(filepath.Join(rd, "release.json"), []byte(rec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("releases/20261202T100000Z-v2", filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	ssh := []string{"-i", p.sshd.ClientKey, "--known-hosts", p.sshd.KnownHosts, "--no-agent"}
	r := p.run(t, false, "__complete", append(append([]string{"--config=" + p.config, "rollback"}, ssh...), "pi1", "2026120")...)
	if got := completions(r.out); strings.Join(got, " ") != "20261202T100000Z-v2 20261201T100000Z-v1" || !strings.Contains(r.out, "v2, live, current") {
		t.Errorf("releases of pi1: %q", r.out)
	}
	r = p.run(t, false, "__complete", append(append([]string{"--config=" + p.config, "rollback"}, ssh...), "pi2", "")...)
	if got := completions(r.out); len(got) != 0 {
		t.Errorf("releases of a dead host: %q", got)
	}
}

// completions are the candidates of a __complete answer, without the
// directive line and descriptions.
func completions(out string) []string {
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" || strings.HasPrefix(l, ":") || strings.HasPrefix(l, "Completion ended") {
			continue
		}
		name, _, _ := strings.Cut(l, "\t")
		got = append(got, name)
	}
	return got
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
