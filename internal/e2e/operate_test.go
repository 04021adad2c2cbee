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
// deploy, status, logs, a restart, a second deploy, a prune that keeps the
// previous release, a rollback to it, and the audit trail of all of it.
func TestOperateAPiFromTheCLI(t *testing.T) {
	testenv.ExclusiveDocker(t)
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	p := &stackProject{dir: t.TempDir(), offset: 0}
	p.env = append(os.Environ(), "NO_COLOR=1")
	deployDir := filepath.Join(p.dir, "pi")
	yml := fmt.Sprintf("platforms: [linux/amd64]\nimages:\n  name: lucid-e2e/lucid-{service}\n  tag: e2e\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n",
		sshd.Host, sshd.Port, sshd.User, deployDir)
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	caCerts := filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(caCerts, []byte("e2e bundle\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeProject(t, "lucid", "lucid-e2e/") })
	ssh := []string{"-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, "--no-agent"}
	run := func(want int, args ...string) string {
		t.Helper()
		out, errOut, code := p.lucidctl(t, args...)
		if code != want {
			t.Fatalf("lucidctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out
	}
	deploy := func(version string) {
		t.Helper()
		run(0, append([]string{"deploy", "pi", "--lucid", lucidBin, "--version", version, "--base", "scratch", "--ca-certs", caCerts, "--min-free", "16"}, ssh...)...)
	}

	run(0, "render", "--no-consul")
	deploy("v1.0.0")

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
	run(0, append([]string{"rollback", "pi"}, ssh...)...)

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
