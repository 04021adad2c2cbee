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

	"filippo.io/age"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	backupcmd "github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/restore"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
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
// and this stack's ports are shifted by the test's offset. As lucidctl
// deploy does, the services' operator credentials are bound to target pi.
func deployRelease(t *testing.T, sshd *testenv.SSHD, dir, bin string, f *deployfiles.Files) {
	t.Helper()
	envs, err := deployfiles.BindOperatorCredentials(f.ServiceEnvs, f.EnvValues["LUCID_OPERATOR_TOKEN"], "pi")
	if err != nil {
		t.Fatal(err)
	}
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
	if _, err := d.Deploy(context.Background(), deploy.Bundle{Compose: f.Compose, EnvFiles: envs, Version: "v0-restoretest", Images: built}); err != nil {
		t.Fatalf("deploy: %v", err)
	}
}

// TestTargetRestoreThroughDocker drives a Pi's backup and restore end to
// end against a real sshd whose Docker Engine is this machine's: a
// deployed release records a session and hands out its receipt; `lucidctl
// backup --target` copies it online, age-encrypted, and a second backup
// after more data sends only what changed. Then the card dies: containers
// and volumes are removed, a release is deployed onto empty volumes, and
// `lucidctl restore --target` writes every volume through one-shot `lucid
// data restore` containers. The engine comes back fenced; the checks pass
// through SSH (the chain audited, every chunk scrubbed against its id, the
// backup's figures, the receipt in the restored chain); a restore over the
// data now there needs --yes; and once the fence is lifted at the height
// the backup holds, new anchors are sealed.
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
	// removeRelease removes the release's containers and volumes, as a
	// dead card loses them.
	removeRelease := func() {
		ids, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=com.docker.compose.project="+deploy.ComposeProject).Output()
		for _, id := range strings.Fields(string(ids)) {
			_ = exec.Command("docker", "rm", "-f", "-v", id).Run()
		}
		vols, _ := exec.Command("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+deploy.ComposeProject).Output()
		for _, v := range strings.Fields(string(vols)) {
			_ = exec.Command("docker", "volume", "rm", v).Run()
		}
	}
	t.Cleanup(func() {
		removeRelease()
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
	// A run killed before its cleanup leaves its release behind: start
	// from none.
	removeRelease()
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

	// Backups are encrypted to a key of the operator's.
	ident, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "backup.key")
	if err := os.WriteFile(idFile, []byte(ident.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yml += fmt.Sprintf("backup:\n  dir: backups\n  recipients: [%s]\n  identity: %s\n", ident.Recipient(), idFile)
	if err := os.WriteFile(p.config, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	takeBackup := func() backupcmd.Output {
		t.Helper()
		r := run("--json", "backup", "--target", "pi", "--port-offset", strconv.Itoa(offset))
		var out backupcmd.Output
		if err := json.Unmarshal([]byte(r.out), &out); err != nil || r.code != 0 {
			t.Fatalf("backup: exit %d %v\n%s\n%s", r.code, err, r.out, r.errOut)
		}
		return out
	}
	first := takeBackup()
	if !first.Encrypted || len(first.Services) != 5 || first.Chain == nil || first.Chain.Height < info.Height || first.DataChain == nil || first.DataChain.Chunks != 2 {
		t.Fatalf("first backup: %+v", first)
	}
	if first.Totals.BytesSent == 0 || first.Totals.PiecesNew == 0 {
		t.Errorf("a first backup into an empty repository: %+v", first.Totals)
	}
	// More data, then a second backup: only what changed is sent.
	for i, chunk := range []string{"three", "four"} {
		if err := os.WriteFile(filepath.Join(rec, strconv.Itoa(2+i)), []byte(strings.Repeat(chunk, 1000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if r := p.lucidctl(ctx, "session", "push", rec, "--seal", "--wait", "--wait-timeout", "90s", "--receipt", filepath.Join(dir, "second.tlog-proof")); r.code != 0 {
		t.Fatalf("second session push: exit %d\n%s", r.code, r.errOut)
	}
	second := takeBackup()
	if second.Totals.PiecesReused == 0 || second.Totals.BytesSent >= second.Totals.Bytes {
		t.Errorf("the second backup is not incremental: %+v", second.Totals)
	}
	t.Logf("backups: first %d of %d bytes sent, second %d of %d (%d pieces reused)",
		first.Totals.BytesSent, first.Totals.Bytes, second.Totals.BytesSent, second.Totals.Bytes, second.Totals.PiecesReused)

	// The card dies: no containers, no volumes. A new one gets a release
	// first (restore writes into a deployed release's volumes).
	removeRelease()
	deployRelease(t, sshd, deployDir, bin, f)

	restoreArgs := []string{"restore", "--target", "pi", "--from", filepath.Join(dir, "backups"), "--port-offset", strconv.Itoa(offset), "--receipt", receipt}
	r := run(append([]string{"--json"}, restoreArgs...)...)
	var out restore.Output
	if err := json.Unmarshal([]byte(r.out), &out); err != nil || r.code != 0 {
		t.Fatalf("restore onto empty volumes: exit %d %v\n%s\n%s", r.code, err, r.out, r.errOut)
	}
	if out.Existing || out.Backup != second.ID || len(out.Services) != 5 || out.Fence == nil || out.Verification == nil || !out.Verification.OK {
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
	if b, err := os.ReadFile(fenceCopy); err != nil || json.Unmarshal(b, &fence) != nil || fence.Backup != second.ID || fence.RestoredHeight != second.Chain.Height {
		t.Errorf("fence: %+v %v", fence, err)
	}
	// Now the host holds data: restoring over it needs --yes.
	if r := run(restoreArgs...); r.code != 2 || !strings.Contains(r.errOut, "--yes") {
		t.Fatalf("restore over a host holding data without --yes: exit %d\n%s", r.code, r.errOut)
	}

	// The fence lifted at the height the backup holds, new anchors seal.
	if r := run("maintenance", "fence", "lift", "--target", "pi", "--port-offset", strconv.Itoa(offset), "--known-height", strconv.FormatUint(second.Chain.Height, 10)); r.code != 0 {
		t.Fatalf("fence lift: exit %d\n%s", r.code, r.errOut)
	}
	if r := p.lucidctl(ctx, "session", "push", rec, "--seal", "--wait", "--wait-timeout", "90s", "--receipt", filepath.Join(dir, "after.tlog-proof")); r.code != 0 {
		t.Fatalf("a new anchor after the restore: exit %d\n%s", r.code, r.errOut)
	}
	audit, err := os.ReadFile(filepath.Join(deployDir, deploy.AuditFile))
	if err != nil || !strings.Contains(string(audit), `"action":"restore"`) || !strings.Contains(string(audit), `"action":"backup"`) {
		t.Errorf("the audit log has no backup and restore: %v\n%s", err, audit)
	}
}
