package maintenance_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/maintenance"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/deploy"
)

// offsetFence is the port offset of the fence test's stack.
const offsetFence = 16000

// TestFenceThroughSSH: a stack's engine is put back to a copy of its data
// directory taken before a session was sealed, with a restore fence, as a
// restore leaves it, while the stack's block manager still holds the later
// blocks. ` + "`maintenance fence`" + ` shows the fence, refuses to lift it at the
// newest receipt's height (the engine lacks it) or to accept a fork
// unconfirmed, then fetches the missing blocks from the block manager
// through the gateway, imports them and lifts it.
func TestFenceThroughSSH(t *testing.T) {
	p := newProject(t, offsetFence, "--no-mtls")
	dir := p.dir
	ctx := context.Background()
	tok := p.lucidctl("token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: %s", tok.errOut)
	}
	p.getenv["LUCID_TOKEN"] = strings.TrimSpace(tok.out)
	gateway := fmt.Sprintf("http://127.0.0.1:%d", 8080+offsetFence)
	blocks := engineapi.New(gateway, &http.Client{Timeout: 10 * time.Second, Transport: api.WithBearer(nil, p.getenv["LUCID_TOKEN"])})

	// Not fenced: status says so, exit 0.
	r := p.remote("fence", "status", "--json")
	if r.code != 0 {
		t.Fatalf("fence status: exit %d\n%s", r.code, r.errOut)
	}
	if st := decode[engineapi.FenceStatus](t, r).Hosts[0].Result; st == nil || st.Fenced {
		t.Fatalf("fence status of an unfenced engine: %+v", st)
	}

	// The backup: the engine's data directory, the stack down.
	up := func() {
		t.Helper()
		if r := p.lucidctl("up", "-d", "--no-mtls", "--lucid", lucidBin, "--wait-timeout", "60s"); r.code != 0 {
			t.Fatalf("up: exit %d\n%s", r.code, r.errOut)
		}
	}
	down := func() {
		t.Helper()
		if r := p.lucidctl("down"); r.code != 0 {
			t.Fatalf("down: exit %d\n%s", r.code, r.errOut)
		}
	}
	engineDir := filepath.Join(dir, "state", fmt.Sprintf("offset-%d", offsetFence), "data", "engine")
	backup := filepath.Join(t.TempDir(), "engine")
	// The backup holds the chain's first block, which names the
	// validators: a fenced engine seals none, and without it would know
	// no validator to check a receipt against. A ready stack may not have
	// sealed it yet.
	testenv.Eventually(t, 30*time.Second, "the engine seals its first block", func() bool {
		b, err := blocks.LatestBlock(ctx)
		return err == nil && b.Height >= 1
	})
	down()
	copyTree(t, engineDir, backup)
	up()

	// After the backup: a sealed session, whose receipt the user keeps,
	// and the block manager indexes it.
	if err := os.MkdirAll(filepath.Join(dir, "rec"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rec", "0"), []byte(strings.Repeat("chunk", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	receipt := filepath.Join(dir, "receipt.tlog-proof")
	if r := p.lucidctl("session", "push", filepath.Join(dir, "rec"), "--seal", "--wait", "--receipt", receipt, "--wait-timeout", "60s"); r.code != 0 {
		t.Fatalf("session push: exit %d\n%s", r.code, r.errOut)
	}
	data, err := os.ReadFile(receipt)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := chain.ParseReceipt(data)
	if err != nil {
		t.Fatal(err)
	}
	sealedAt, err := chain.ParseHeaderBody(rc.Checkpoint[:strings.Index(string(rc.Checkpoint), "\n\n")+1])
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the block manager indexes the receipt's block", func() bool {
		b, err := blocks.LatestBlock(ctx)
		return err == nil && b.Height >= sealedAt.Height
	})

	// The restore: the backup back in place, fenced.
	down()
	if err := os.RemoveAll(engineDir); err != nil {
		t.Fatal(err)
	}
	copyTree(t, backup, engineDir)
	fence, _ := json.Marshal(engineapi.Fence{Reason: "restored", Backup: "test-backup", RestoredHeight: 1, At: time.Now().UTC()})
	if err := os.WriteFile(filepath.Join(engineDir, engineapi.FenceFile), fence, 0o600); err != nil {
		t.Fatal(err)
	}
	up()

	r = p.remote("fence", "status", "--json")
	p.noSecret("fence status", r)
	if r.code != 3 {
		t.Fatalf("fence status of a fenced engine: exit %d, want 3\n%s%s", r.code, r.out, r.errOut)
	}
	st := decode[engineapi.FenceStatus](t, r).Hosts[0].Result
	if st == nil || !st.Fenced || st.Fence == nil || st.Fence.Backup != "test-backup" || st.GuardedHeight >= sealedAt.Height {
		t.Fatalf("fence status %+v, the receipt's height %d", st, sealedAt.Height)
	}
	if text := p.remote("fence", "status"); text.code != 3 || !strings.Contains(text.out, "pi: FENCED (restored from backup test-backup") {
		t.Errorf("fence status text: exit %d\n%s%s", text.code, text.out, text.errOut)
	}

	// At the newest receipt's height, which the engine lacks: refused,
	// naming the missing heights.
	r = p.remote("fence", "lift", "--receipt", receipt)
	if r.code != 1 || !strings.Contains(r.errOut, fmt.Sprintf("heights %d..%d are missing", st.GuardedHeight+1, sealedAt.Height)) || !strings.Contains(r.errOut, "--blocks-from") {
		t.Errorf("lift at the receipt's height: exit %d\n%s", r.code, r.errOut)
	}
	// Accepting the fork must be confirmed.
	known := strconv.FormatUint(sealedAt.Height, 10)
	r = p.remote("fence", "lift", "--known-height", known, "--accept-fork")
	if r.code != 2 || !strings.Contains(r.errOut, "VOIDS heights") || !strings.Contains(r.errOut, "the fork was not accepted") {
		t.Errorf("an unconfirmed --accept-fork: exit %d\n%s", r.code, r.errOut)
	}
	if r := p.remote("fence", "lift"); r.code != 2 {
		t.Errorf("lift without a height: exit %d\n%s", r.code, r.errOut)
	}

	// The missing blocks, from the block manager that still has them.
	r = p.remote("fence", "lift", "--blocks-from", gateway, "--json")
	p.noSecret("fence lift", r)
	if r.code != 0 {
		t.Fatalf("lift with --blocks-from: exit %d\n%s", r.code, r.errOut)
	}
	lifted := decode[maintenance.LiftResult](t, r).Hosts[0].Result
	if lifted == nil || lifted.KnownFrom != "blocks-from" || lifted.KnownHeight < sealedAt.Height || lifted.Imported == 0 || lifted.Status.Fenced || len(lifted.Status.Forks) != 0 {
		t.Fatalf("lift result %+v", lifted)
	}
	if !strings.Contains(r.errOut, "importing") {
		t.Errorf("lift progress:\n%s", r.errOut)
	}
	if r := p.remote("fence", "status"); r.code != 0 || !strings.Contains(r.out, "pi: not fenced") {
		t.Errorf("status after the lift: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
	if r := p.remote("fence", "lift", "--known-height", "1"); r.code != 1 || !strings.Contains(r.errOut, "not fenced") {
		t.Errorf("lifting again: exit %d\n%s", r.code, r.errOut)
	}
	// The chain goes on past the imported blocks, one chain: the block
	// manager, which holds them, keeps following.
	testenv.Eventually(t, 30*time.Second, "the block manager follows the lifted engine", func() bool {
		b, err := blocks.LatestBlock(ctx)
		return err == nil && b.Height > lifted.KnownHeight
	})
	trail, err := os.ReadFile(filepath.Join(dir, "pi", deploy.AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"chain.fence.status", "chain.fence.lift", "chain.fence.lift.accept-fork"} {
		if !strings.Contains(string(trail), `"args":["`+action+`"]`) {
			t.Errorf("the audit trail lacks %s", action)
		}
	}
}

// copyTree copies the directory src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
