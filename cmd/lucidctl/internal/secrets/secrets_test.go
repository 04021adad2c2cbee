package secrets

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
)

// world is a Pi (a real sshd; its deploy directory is on this machine)
// whose current release was rendered elsewhere, and a fresh clone of the
// project: rendered here, with new secrets.
type world struct {
	sshd       *testenv.SSHD
	dir        string // the clone
	host, mine *deployfiles.Files
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: t.TempDir()}
	deployDir := filepath.Join(t.TempDir(), "production")
	yml := fmt.Sprintf("targets:\n  pi:\n    host: %s\n    port: %d\n    user: %[3]s\n    dir: %[4]s\n  pi2:\n    host: %[1]s\n    port: %[2]d\n    user: %[3]s\n    dir: %[4]s-2\ngroups:\n  fleet: [pi, pi2]\nimages:\n  name: lucid-clitest/{service}\n  tag: t\n",
		w.sshd.Host, w.sshd.Port, w.sshd.User, deployDir)
	if err := os.WriteFile(filepath.Join(w.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	w.host = renderInto(t, "", nil)
	// The host's current release, as a deploy leaves it: its operator
	// credentials bound to it.
	bound, err := deployfiles.BindOperatorCredentials(w.host.ServiceEnvs, w.host.EnvValues["LUCID_OPERATOR_TOKEN"], "pi")
	if err != nil {
		t.Fatal(err)
	}
	rel := filepath.Join(deployDir, "releases", "20260101T000000Z-v1")
	for p, data := range bound {
		if err := envfile.WriteAtomic(filepath.Join(rel, filepath.FromSlash(p)), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("releases/20260101T000000Z-v1", filepath.Join(deployDir, "current")); err != nil {
		t.Fatal(err)
	}
	w.mine = renderInto(t, w.dir, map[string]string{"REDIS_URL": "redis://mine:6379/0"})
	return w
}

// renderInto renders with new secrets (and set), into dir unless "".
func renderInto(t *testing.T, dir string, set map[string]string) *deployfiles.Files {
	t.Helper()
	var existing map[string]string
	if dir != "" {
		if v, err := envfile.Read(filepath.Join(dir, deployfiles.EnvPath)); err == nil {
			existing = v
		}
	}
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "lucid-clitest/{service}", ImageTag: "t", Existing: existing, Set: set})
	if err != nil {
		t.Fatal(err)
	}
	if dir != "" {
		for _, rf := range f.All() {
			if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// run runs `lucidctl secrets args...` in the clone.
func (w *world) run(t *testing.T, jsonOut bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath, env.JSON = filepath.Join(w.dir, "lucid.yaml"), jsonOut
	cmd := NewCmd(env)
	cmd.SetArgs(append(args, "-i", w.sshd.ClientKey, "--known-hosts", w.sshd.KnownHosts, "--no-agent"))
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// noValues fails if any secret of either side appears in s.
func (w *world) noValues(t *testing.T, what, s string) {
	t.Helper()
	for _, f := range []*deployfiles.Files{w.host, w.mine} {
		for _, k := range deployfiles.Secrets {
			if v := f.EnvValues[k]; v != "" && strings.Contains(s, v) {
				t.Errorf("%s shows the value of %s", what, k)
			}
		}
	}
}

func TestPull(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	envPath := filepath.Join(w.dir, deployfiles.EnvPath)

	if _, _, err := w.run(t, false, "pull", "--target", "fleet"); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("pull of a group: %v, want a usage error", err)
	}

	// The operator token: the host has only its hash, and the clone's is
	// another. The others are written all the same.
	stdout, stderr, err := w.run(t, false, "pull", "--target", "pi")
	if cli.ExitCode(ctx, err) != cli.ExitFailure || !strings.Contains(err.Error(), "LUCID_OPERATOR_TOKEN") || !strings.Contains(cli.Hint(err), "--rotate LUCID_OPERATOR_TOKEN") {
		t.Fatalf("pull with another operator token: %v (hint %q)", err, cli.Hint(err))
	}
	w.noValues(t, "pull's output", stdout+stderr+err.Error())
	for _, k := range []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN", deployfiles.ConsulTokenKey} {
		if !strings.Contains(stderr, k) {
			t.Errorf("stderr does not name %s: %q", k, stderr)
		}
	}
	fi, err := os.Stat(envPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file: %v, %v", fi, err)
	}
	got, err := envfile.Read(envPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN", deployfiles.ConsulTokenKey} {
		if got[k] != w.host.EnvValues[k] {
			t.Errorf("%s is not the host's", k)
		}
	}
	if got["REDIS_URL"] != "redis://mine:6379/0" || got["LUCID_OPERATOR_TOKEN"] != w.mine.EnvValues["LUCID_OPERATOR_TOKEN"] {
		t.Error("the file's other values were not kept")
	}

	// With the token its holder has, pull has nothing left to do.
	if _, err := envfile.Set(envPath, map[string]string{"LUCID_OPERATOR_TOKEN": w.host.EnvValues["LUCID_OPERATOR_TOKEN"]}); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := w.run(t, false, "pull", "--target", "pi"); err != nil || !strings.Contains(stderr, "already holds") {
		t.Errorf("pull again: %v, %q", err, stderr)
	}
}

func TestDiff(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)

	stdout, stderr, err := w.run(t, false, "diff", "--target", "pi")
	if cli.ExitCode(ctx, err) != cli.ExitProblems {
		t.Fatalf("diff of a fresh clone: %v, want exit 3", err)
	}
	w.noValues(t, "diff's output", stdout+stderr)
	for _, k := range deployfiles.DataBound {
		if slices.Contains(deployfiles.ClusterSecrets, k) {
			continue // this project has no cluster
		}
		if !strings.Contains(stdout, k) {
			t.Errorf("stdout does not name %s: %q", k, stdout)
		}
	}

	// A group: the second member has no release, and takes anything.
	stdout, _, err = w.run(t, true, "diff", "--target", "fleet")
	if cli.ExitCode(ctx, err) != cli.ExitProblems {
		t.Fatalf("diff --json of the group: %v, want exit 3", err)
	}
	var out DiffOutput
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("--json: %v: %q", err, stdout)
	}
	if len(out.Hosts) != 2 || out.Hosts[0].Target != "pi" || out.Hosts[0].Release != "20260101T000000Z-v1" ||
		!slices.Contains(out.Hosts[0].DataBound, "ENCRYPTION_KEY") || out.Hosts[1].Release != "" || len(out.Hosts[1].Differ) != 0 {
		t.Errorf("--json: %+v", out)
	}
	w.noValues(t, "diff --json", stdout)

	// After pull (and the token its holder has) and a render: none differ.
	envPath := filepath.Join(w.dir, deployfiles.EnvPath)
	if _, err := envfile.Set(envPath, map[string]string{"LUCID_OPERATOR_TOKEN": w.host.EnvValues["LUCID_OPERATOR_TOKEN"]}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.run(t, false, "pull", "--target", "pi"); err != nil {
		t.Fatal(err)
	}
	renderInto(t, w.dir, nil)
	if stdout, _, err := w.run(t, false, "diff", "--target", "pi"); err != nil || !bytes.Contains([]byte(stdout), []byte("the same as release")) {
		t.Errorf("diff after pull and render: %v, %q", err, stdout)
	}
}
