package restore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pickme/lucid/cmd/lucidctl/internal/restore"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/sshx"
)

const dockerImages = "lucid-restoretest/{service}"

// deployRelease deploys the rendered files with images of bin, through
// pkg/deploy: lucidctl deploy's gate asks the gateway on its catalog port,
// and this stack's ports are shifted by the test's offset.
func deployRelease(t *testing.T, sshd *testenv.SSHD, dir, bin string, f *deployfiles.Files) {
	t.Helper()
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	built, err := imagebuild.Assemble(context.Background(), imagebuild.Options{
		Binaries: map[string]string{amd64.String(): bin}, Platforms: []v1.Platform{amd64}, Base: imagebuild.BaseScratch,
		ImageName: dockerImages, Tag: "t", Version: "v0-restoretest",
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := sshx.Dial(context.Background(), sshx.Target{Host: sshd.Host, Port: sshd.Port, User: sshd.User},
		sshx.Options{KeyFiles: []string{sshd.ClientKey}, KnownHosts: sshd.KnownHosts, NoAgent: true, ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := deploy.New(deploy.Config{Name: "pi", SSH: c, Dir: dir, ImageName: dockerImages, Tag: "t", MinFreeBytes: 16 << 20,
		HealthTimeout: 2 * time.Minute, GatewayHostPort: 8080 + offset})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Deploy(context.Background(), deploy.Bundle{Compose: f.Compose, EnvFiles: f.ServiceEnvs, Version: "v0-restoretest", Images: built}); err != nil {
		t.Fatalf("deploy: %v", err)
	}
}

// TestTargetRestoreThroughDocker drives `lucidctl restore --target pi`
// end to end against a real sshd whose Docker Engine is this machine's: a
// deployed release records a session and hands out its receipt; the
// services' data, taken out of their stopped containers, is the backup.
// The host holds data, so the restore needs --yes (exit 2 without); with
// it, every volume is written by a one-shot `lucid data restore`
// container, the engine's volume holds the fence, the services come back
// healthy, and the checks pass through SSH: the chain audited, the data
// chain scrubbed, the backup's figures, the receipt in the restored chain.
func TestTargetRestoreThroughDocker(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "lucid")
	if err := imagebuild.Compile(context.Background(), imagebuild.CompileOptions{SourceDir: "../../../..", Platform: v1.Platform{OS: "linux", Architecture: "amd64"}, Out: bin, Version: "v0-restoretest", Commit: "test"}); err != nil {
		t.Fatal(err)
	}
	testenv.ExclusiveDocker(t)
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir := t.TempDir()
	deployDir := filepath.Join(t.TempDir(), "production")
	p := &project{t: t, dir: dir, config: filepath.Join(dir, "lucid.yaml")}
	yml := fmt.Sprintf("local:\n  port_offset: %d\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\nimages:\n  name: %s\n  tag: t\nplatforms: [linux/amd64]\n",
		offset, sshd.Host, sshd.Port, sshd.User, deployDir, dockerImages)
	if err := os.WriteFile(p.config, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: dockerImages, ImageTag: "t", NoConsul: true, PortOffset: offset})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+deploy.ComposeProject).Output()
		for _, id := range strings.Fields(string(ids)) {
			_ = exec.Command("docker", "rm", "-f", "-v", id).Run()
		}
		vols, _ := exec.Command("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+deploy.ComposeProject).Output()
		for _, v := range strings.Fields(string(vols)) {
			_ = exec.Command("docker", "volume", "rm", v).Run()
		}
		list, _ := exec.Command("docker", "images", "--format", "{{.Repository}}:{{.Tag}}").Output()
		for _, ref := range strings.Fields(string(list)) {
			if strings.HasPrefix(ref, "lucid-restoretest/") {
				_ = exec.Command("docker", "rmi", "-f", ref).Run()
			}
		}
	})
	ssh := []string{"-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, "--no-agent"}
	ctx := context.Background()
	run := func(args ...string) result {
		t.Helper()
		return p.lucidctl(ctx, append(args, ssh...)...)
	}
	deployRelease(t, sshd, deployDir, bin, f)

	tok := p.lucidctl(ctx, "token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: %s", tok.errOut)
	}
	token := strings.TrimSpace(tok.out)
	t.Setenv("LUCID_TOKEN", token)
	rec := filepath.Join(dir, "rec")
	if err := os.MkdirAll(rec, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, chunk := range []string{"one", "two"} {
		if err := os.WriteFile(filepath.Join(rec, strconv.Itoa(i)), []byte(strings.Repeat(chunk, 1000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	receipt := filepath.Join(dir, "alice.tlog-proof")
	if r := p.lucidctl(ctx, "session", "push", rec, "--seal", "--wait", "--receipt", receipt, "--wait-timeout", "90s"); r.code != 0 {
		t.Fatalf("session push: exit %d\n%s", r.code, r.errOut)
	}
	hc := &http.Client{Transport: api.WithBearer(nil, token)}
	info, err := engineapi.New(fmt.Sprintf("http://127.0.0.1:%d/blockchain", 8080+offset), hc).Chain(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// The backup: each stateful service's data, out of its stopped
	// container.
	stateful := []string{"mesh", "engine", "anchoring", "blocks", "datachain"}
	if r := run(append([]string{"stop", "--target", "pi", "--force"}, stateful...)...); r.code != 0 {
		t.Fatalf("stop: exit %d\n%s", r.code, r.errOut)
	}
	taken := t.TempDir()
	for _, svc := range stateful {
		s, _ := catalog.Lookup(svc)
		if out, err := exec.Command("docker", "cp", s.Container+":"+deployfiles.DataRoot+"/"+svc, filepath.Join(taken, svc)).CombinedOutput(); err != nil {
			t.Fatalf("docker cp %s: %v %s", svc, err, out)
		}
	}
	if r := run(append([]string{"start", "--target", "pi"}, stateful...)...); r.code != 0 {
		t.Fatalf("start: exit %d\n%s", r.code, r.errOut)
	}
	backup := filepath.Join(dir, "backup")
	copyBackup(t, backup, func(svc string) string { return filepath.Join(taken, svc) }, snapshotapi.Facts{
		Chain:     &snapshotapi.ChainFacts{ChainID: info.ChainID, Height: info.Height, TreeSize: info.TreeSize, Root: info.Root, ValidatorKey: info.ValidatorKey},
		DataChain: &snapshotapi.DataChainFacts{Chunks: 2, Sessions: 1, SealedSessions: 1},
	})

	restoreArgs := []string{"restore", "--target", "pi", "--from", backup, "--port-offset", strconv.Itoa(offset), "--receipt", receipt}
	if r := run(restoreArgs...); r.code != 2 || !strings.Contains(r.errOut, "--yes") || !strings.Contains(r.errOut, "transactions") {
		t.Fatalf("restore over a host holding data without --yes: exit %d\n%s", r.code, r.errOut)
	}
	r := run(append([]string{"--json"}, append(restoreArgs, "--yes")...)...)
	var out restore.Output
	if err := json.Unmarshal([]byte(r.out), &out); err != nil || r.code != 0 {
		t.Fatalf("restore: exit %d %v\n%s\n%s", r.code, err, r.out, r.errOut)
	}
	if !out.Existing || len(out.Services) != len(stateful) || out.Fence == nil || out.Verification == nil || !out.Verification.OK {
		t.Errorf("restore: %+v\n%s", out, r.errOut)
	}
	if len(out.Verification.Receipts) != 1 || out.Verification.Receipts[0].Status != restore.ReceiptInChain {
		t.Errorf("receipt: %+v", out.Verification.Receipts)
	}
	engine, _ := catalog.Lookup("engine")
	fenceCopy := filepath.Join(t.TempDir(), "fence.json")
	if b, err := exec.Command("docker", "cp", engine.Container+":"+deployfiles.DataRoot+"/engine/"+engineapi.FenceFile, fenceCopy).CombinedOutput(); err != nil {
		t.Fatalf("the engine's volume holds no fence: %v %s", err, b)
	}
	var fence engineapi.Fence
	if b, err := os.ReadFile(fenceCopy); err != nil || json.Unmarshal(b, &fence) != nil || fence.Backup != "test-backup-1" || fence.RestoredHeight != info.Height {
		t.Errorf("fence: %+v %v", fence, err)
	}
	audit, err := os.ReadFile(filepath.Join(deployDir, deploy.AuditFile))
	if err != nil || !strings.Contains(string(audit), `"action":"restore"`) {
		t.Errorf("the audit log has no restore: %v\n%s", err, audit)
	}
}
