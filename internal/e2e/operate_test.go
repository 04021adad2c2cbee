package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
)

// TestOperateAPiFromTheCLI drives the operator's day after a deploy the way
// docs/operations.md tells it, every step a lucidctl command against a
// "Pi" (a real sshd on 127.0.0.1 whose Docker is this machine's Engine):
// group deploys whose canary fails and passes (beside a Pi that cannot be
// deployed to), status, logs, a restart, a second deploy, a prune that
// keeps the previous release, a rollback to it, and the audit trail of all
// of it.
func TestOperateAPiFromTheCLI(t *testing.T) {
	testenv.ExclusiveDocker(t)
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	p := &stackProject{dir: t.TempDir(), offset: 0}
	p.env = append(os.Environ(), "NO_COLOR=1")
	deployDir := filepath.Join(p.dir, "pi")
	// broken is a Pi whose deploy directory cannot be made (its parent is
	// a file): it fails its preflight, before anything changes on it.
	notADir := filepath.Join(p.dir, "not-a-dir")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	target := "    host: %[1]s\n    port: %[2]d\n    user: %[3]s\n"
	yml := fmt.Sprintf("platforms: [linux/amd64]\nimages:\n  name: lucid-e2e/lucid-{service}\n  tag: e2e\ntargets:\n  pi:\n"+target+"    dir: %[4]s\n    project: lucid-e2e\n  broken:\n"+target+"    dir: %[5]s\n"+
		"groups:\n  canary-fails: [broken, pi]\n  canary-first: [pi, broken]\n",
		sshd.Host, sshd.Port, sshd.User, deployDir, filepath.Join(notADir, "pi"))
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	caCerts := filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(caCerts, []byte("e2e bundle\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeProject(t, "lucid-e2e", "lucid-e2e/") })
	ssh := []string{"-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, "--no-agent"}
	run := func(want int, args ...string) string {
		t.Helper()
		out, errOut, code := p.lucidctl(t, args...)
		if code != want {
			t.Fatalf("want exit %d: %s", want, failedRun(args, code, out, errOut))
		}
		return out
	}
	// Each release is a lucid stamped with its version, as make build
	// stamps one; deploy labels the release with it.
	binaries := map[string]string{}
	for _, v := range []string{"v1.0.0", "v2.0.0"} {
		binaries[v] = filepath.Join(t.TempDir(), "lucid")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-w -X github.com/pickme/lucid/pkg/buildinfo.Version="+v, "-o", binaries[v], "github.com/pickme/lucid/cmd/lucid")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build lucid %s: %v\n%s", v, err, out)
		}
	}
	deployArgs := func(to, version string) []string {
		return append([]string{"deploy", to, "--lucid", binaries[version], "--base", "scratch", "--ca-certs", caCerts, "--min-free", "16"}, ssh...)
	}
	deploy := func(version string) { t.Helper(); run(0, deployArgs("pi", version)...) }
	run(0, "render", "--no-consul")

	// A group's first host is its canary: when it fails, the rest are
	// not touched; when it passes, they are deployed in turn.
	_, errOut, code := p.lucidctl(t, deployArgs("canary-fails", "v1.0.0")...)
	if code != 1 || !strings.Contains(errOut, "the canary broken failed; the other 1 host(s) (pi) were not touched") {
		t.Fatalf("a failing canary: exit %d\n%s", code, errOut)
	}
	if _, err := os.Stat(deployDir); !os.IsNotExist(err) {
		t.Fatalf("a host after the failed canary was touched: %v", err)
	}
	_, errOut, code = p.lucidctl(t, deployArgs("canary-first", "v1.0.0")...)
	if code != 1 || !strings.Contains(errOut, "canary pi ok; deploying the other 1") || !strings.Contains(errOut, "pi run the new release") {
		t.Fatalf("a passing canary, then a failing host: exit %d\n%s", code, errOut)
	}

	// Is it up?
	var status struct {
		Hosts []struct {
			Name    string
			Healthy bool
			Release *struct{ ID, Version string }
		}
	}
	if err := json.Unmarshal([]byte(run(0, append([]string{"status", "--target", "pi", "--json"}, ssh...)...)), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Hosts) != 1 || !status.Hosts[0].Healthy || status.Hosts[0].Release == nil || status.Hosts[0].Release.Version != "v1.0.0" {
		t.Fatalf("status: %+v", status)
	}
	first := status.Hosts[0].Release.ID

	// What is it saying?
	if out := run(0, append([]string{"logs", "--target", "pi", "gateway", "--tail", "5"}, ssh...)...); !strings.Contains(out, "gateway") {
		t.Errorf("logs of the gateway:\n%s", out)
	}

	// One service restarted, health-gated.
	run(0, append([]string{"restart", "--target", "pi", "engine"}, ssh...)...)

	// A second release; a prune keeping one release keeps the previous one
	// too, and a rollback to it works.
	deploy("v2.0.0")
	run(0, append([]string{"prune", "--target", "pi", "--keep", "1"}, ssh...)...)
	if _, err := os.Stat(filepath.Join(deployDir, "releases", first)); err != nil {
		t.Fatalf("prune removed the previous release: %v", err)
	}
	// The rollback reads the engine's consensus status after the gate,
	// with the operator token, as the deploy does.
	args := append([]string{"rollback", "pi"}, ssh...)
	out, errOut, code := p.lucidctl(t, args...)
	if code != 0 {
		t.Fatalf("rollback: %s", failedRun(args, code, out, errOut))
	}
	if !strings.Contains(errOut, "caught-up") || strings.Contains(errOut, "no operator token") {
		t.Errorf("the rollback's caught-up gate did not read the engine with the operator token:\n%s", errOut)
	}

	// Who did what: the whole day, in order.
	var trail struct {
		Entries []struct {
			Action string
			Result string
			Key    string
		}
	}
	if err := json.Unmarshal([]byte(run(0, append([]string{"audit", "--target", "pi", "--json"}, ssh...)...)), &trail); err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range trail.Entries {
		actions = append(actions, e.Action+":"+e.Result)
		if !strings.HasPrefix(e.Key, "SHA256:") {
			t.Errorf("entry %s without the key that ran it", e.Action)
		}
	}
	if got, want := strings.Join(actions, " "), "deploy:ok restart:ok deploy:ok prune:ok rollback:ok"; got != want {
		t.Errorf("audit trail %q, want %q", got, want)
	}
}

// removeProject removes what a test's deploy left on this machine's Docker
// Engine: the compose project's containers and volumes, and images whose
// name contains imagePrefix.
func removeProject(t *testing.T, project, imagePrefix string) {
	t.Helper()
	label := "label=com.docker.compose.project=" + project
	ids, _ := exec.Command("docker", "ps", "-aq", "--filter", label).Output()
	for _, id := range strings.Fields(string(ids)) {
		_ = exec.Command("docker", "rm", "-f", "-v", id).Run()
	}
	vols, _ := exec.Command("docker", "volume", "ls", "-q", "--filter", label).Output()
	for _, v := range strings.Fields(string(vols)) {
		_ = exec.Command("docker", "volume", "rm", v).Run()
	}
	refs, _ := exec.Command("docker", "images", "--format", "{{.Repository}}:{{.Tag}}").Output()
	for _, ref := range strings.Fields(string(refs)) {
		if strings.Contains(ref, imagePrefix) {
			_ = exec.Command("docker", "rmi", "-f", ref).Run()
		}
	}
}
