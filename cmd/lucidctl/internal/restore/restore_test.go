package restore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	backupcmd "github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/restore"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root/roottest"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
)

// lucidBin is the lucid binary the tests supervise, built once.
var lucidBin string

// TestMain builds lucid, and makes the test binary act as lucidctl when `up
// -d` starts it again as the background supervisor.
func TestMain(m *testing.M) { roottest.Main(m, testenv.BuildLucid, &lucidBin) }

type result struct {
	code        int
	out, errOut string
}

// project is a scratch project with its own lucid.yaml and local stack.
type project struct {
	t      *testing.T
	dir    string
	config string
}

func (p *project) lucidctl(ctx context.Context, args ...string) result {
	p.t.Helper()
	io, _, out, errOut := iostreams.Test()
	code := root.Execute(ctx, append([]string{"--config", p.config}, args...), io, os.Getenv)
	return result{code, out.String(), errOut.String()}
}

const offset = 18000

// dataDir is service's data directory of the stack.
func (p *project) dataDir(service string) string {
	return filepath.Join(p.dir, "state", "offset-"+strconv.Itoa(offset), "data", service)
}

// TestLocalRestoreEndToEnd: a stack at offset 18000 records a session and
// hands out its receipt; `lucidctl backup` copies it while it serves.
// A restore onto the stack that still holds data needs --yes (exit 2
// without); after a wipe, the restore writes every data directory and
// fences the engine; the stack comes up, and --verify-only finds the chain
// audited, the data chain scrubbed clean with the backed-up chunks, the
// backup's figures, and the receipt in the restored chain. The fence lifted
// at the backup's height, new anchors are sealed.
func TestLocalRestoreEndToEnd(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the end-to-end stack tests use Unix signals")
	}
	// The stack is also target "pi", through a real sshd, as the
	// maintenance tests do: its services are reached on the loopback as a
	// Pi's are, and takes the operator's credentials for pi (local.name).
	// It runs no release there.
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir := t.TempDir()
	p := &project{t: t, dir: dir, config: filepath.Join(dir, "lucid.yaml")}
	yaml := fmt.Sprintf("local:\n  name: pi\n  state_dir: state\n  env_file: secrets.env\n  consul: \"off\"\n  port_offset: %d\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n",
		offset, sshd.Host, sshd.Port, sshd.User, filepath.Join(dir, "pi"))
	ssh := []string{"--target", "pi", "-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, "--no-agent"}
	if err := os.WriteFile(p.config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secrets.env"), []byte("LUCID_BLOCK_INTERVAL=1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.lucidctl(context.Background(), "down") })
	ctx := context.Background()
	up := func() {
		t.Helper()
		if r := p.lucidctl(ctx, "up", "-d", "--lucid", lucidBin, "--wait-timeout", "60s"); r.code != 0 {
			t.Fatalf("up: exit %d\n%s", r.code, r.errOut)
		}
	}
	up()

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
	for i, chunk := range []string{"one", "two", "three"} {
		if err := os.WriteFile(filepath.Join(rec, strconv.Itoa(i)), []byte(strings.Repeat(chunk, 1000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	receipt := filepath.Join(dir, "alice.tlog-proof")
	if r := p.lucidctl(ctx, "session", "push", rec, "--seal", "--wait", "--receipt", receipt, "--wait-timeout", "60s"); r.code != 0 {
		t.Fatalf("session push: exit %d\n%s", r.code, r.errOut)
	}
	// The chain as the backup's facts say it: the copy taken after this
	// holds at least these blocks.
	hc := &http.Client{Transport: api.WithBearer(nil, token)}
	info, err := engineapi.New(fmt.Sprintf("http://127.0.0.1:%d/blockchain", 8080+offset), hc).Chain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// An online backup, taken while the stack serves.
	backup := filepath.Join(dir, "backup")
	b := p.lucidctl(ctx, "--json", "backup", "--to", backup, "--plaintext")
	var taken backupcmd.Output
	if err := json.Unmarshal([]byte(b.out), &taken); err != nil || b.code != 0 {
		t.Fatalf("backup: exit %d %v\n%s\n%s", b.code, err, b.out, b.errOut)
	}
	if taken.Chain == nil || taken.Chain.Height < info.Height || taken.DataChain == nil || taken.DataChain.Chunks != 3 {
		t.Fatalf("backup facts: %+v", taken)
	}
	if r := p.lucidctl(ctx, "down"); r.code != 0 {
		t.Fatalf("down: %s", r.errOut)
	}
	backupID, backupHeight := taken.ID, taken.Chain.Height

	// The stack holds data: without --yes and without a terminal, exit 2.
	if r := p.lucidctl(ctx, "restore", "--from", backup); r.code != 2 || !strings.Contains(r.errOut, "--yes") {
		t.Fatalf("restore over data without --yes: exit %d\n%s", r.code, r.errOut)
	}
	// A new card: nothing in the data directories.
	if err := os.RemoveAll(filepath.Join(dir, "state", "offset-"+strconv.Itoa(offset), "data")); err != nil {
		t.Fatal(err)
	}
	r := p.lucidctl(ctx, "--json", "restore", "--from", backup)
	if r.code != 0 {
		t.Fatalf("restore: exit %d\n%s\n%s", r.code, r.out, r.errOut)
	}
	var out restore.Output
	if err := json.Unmarshal([]byte(r.out), &out); err != nil {
		t.Fatalf("restore --json: %v\n%s", err, r.out)
	}
	if out.Existing || len(out.Services) != 5 || out.Fence == nil || out.Fence.RestoredHeight != backupHeight || out.Backup != backupID {
		t.Errorf("restore: %+v", out)
	}
	fb, err := os.ReadFile(filepath.Join(p.dataDir("engine"), engineapi.FenceFile))
	if err != nil {
		t.Fatalf("the engine is not fenced: %v", err)
	}
	var fence engineapi.Fence
	if err := json.Unmarshal(fb, &fence); err != nil || fence.Reason != "restored" || fence.Backup != backupID || fence.RestoredHeight != backupHeight {
		t.Errorf("fence %s: %v", fb, err)
	}

	up()
	v := p.lucidctl(ctx, "--json", "restore", "--from", backup, "--verify-only", "--receipt", receipt)
	var checked restore.Output
	if err := json.Unmarshal([]byte(v.out), &checked); err != nil {
		t.Fatalf("verify-only --json: exit %d %v\n%s\n%s", v.code, err, v.out, v.errOut)
	}
	if v.code != 0 || checked.Verification == nil || !checked.Verification.OK {
		t.Fatalf("verify-only: exit %d\n%s\n%s", v.code, v.out, v.errOut)
	}
	names := map[string]bool{}
	for _, c := range checked.Verification.Checks {
		names[c.Name] = c.OK
	}
	for _, n := range []string{"chain_facts", "chain_audit", "datachain_scrub", "datachain_facts", "receipt"} {
		if !names[n] {
			t.Errorf("check %s missing or failed: %+v", n, checked.Verification.Checks)
		}
	}
	if len(checked.Verification.Receipts) != 1 || checked.Verification.Receipts[0].Status != restore.ReceiptInChain {
		t.Errorf("receipt: %+v", checked.Verification.Receipts)
	}
	if checked.Verification.Restored.DataChainChunk != 3 {
		t.Errorf("restored data chain: %+v", checked.Verification.Restored)
	}

	// The same checks through SSH, as on a Pi. The repository holds the
	// local stack's backup, not pi's: a restore onto pi never takes
	// another host's newest by default, and takes it when named, saying
	// whose it is.
	if r := p.lucidctl(ctx, append([]string{"restore", "--from", backup, "--verify-only", "--port-offset", strconv.Itoa(offset)}, ssh...)...); r.code == 0 ||
		!strings.Contains(r.errOut, "no such backup of pi") || !strings.Contains(r.errOut, "--backup") {
		t.Errorf("restore onto pi from a repository of the local stack's backups: exit %d\n%s", r.code, r.errOut)
	}
	remote := p.lucidctl(ctx, append([]string{"--json", "restore", "--from", backup, "--backup", backupID, "--verify-only", "--receipt", receipt, "--port-offset", strconv.Itoa(offset)}, ssh...)...)
	var viaSSH restore.Output
	if err := json.Unmarshal([]byte(remote.out), &viaSSH); err != nil || remote.code != 0 || viaSSH.Verification == nil || !viaSSH.Verification.OK || viaSSH.Target != "pi" {
		t.Errorf("verify-only --target pi: exit %d %v\n%s\n%s", remote.code, err, remote.out, remote.errOut)
	}
	if !strings.Contains(remote.errOut, "backup "+backupID+" is of local") {
		t.Errorf("restoring the local stack's backup onto pi said nothing of it:\n%s", remote.errOut)
	}
	// A host without a release: deploy first.
	if r := p.lucidctl(ctx, append([]string{"restore", "--from", backup, "--backup", backupID, "--yes"}, ssh...)...); r.code != 1 || !strings.Contains(r.errOut, "deploy first") {
		t.Errorf("restore onto a host without a release: exit %d\n%s", r.code, r.errOut)
	}

	// A receipt that is not one: the check fails, exit 3.
	bad := filepath.Join(dir, "bad.tlog-proof")
	if err := os.WriteFile(bad, []byte("not a receipt\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := p.lucidctl(ctx, "restore", "--from", backup, "--verify-only", "--receipt", bad); r.code != 3 {
		t.Errorf("verify-only with a bad receipt: exit %d\n%s\n%s", r.code, r.out, r.errOut)
	}

	// The fence lifted on the local stack at the backup's height, new
	// anchors are sealed again.
	if r := p.lucidctl(ctx, "maintenance", "fence", "lift", "--known-height", strconv.FormatUint(backupHeight, 10)); r.code != 0 {
		t.Fatalf("fence lift: exit %d\n%s", r.code, r.errOut)
	}
	if r := p.lucidctl(ctx, "session", "push", rec, "--seal", "--wait", "--receipt", filepath.Join(dir, "after.tlog-proof"), "--wait-timeout", "60s"); r.code != 0 {
		t.Fatalf("a new anchor after the restore: exit %d\n%s", r.code, r.errOut)
	}
}
