package maintenance_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/maintenance"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

// offsetFence is the port offset of the fence test's stack.
const offsetFence = 16000

// TestFenceThroughSSH: a stack whose engine is restarted with a restore
// fence in its data directory, as a restore leaves it; `maintenance fence`
// shows it, refuses to lift it over heights the engine lacks or to accept
// a fork unconfirmed, and lifts it with the newest receipt's height.
func TestFenceThroughSSH(t *testing.T) {
	p := newProject(t, offsetFence, "--no-mtls")
	dir := p.dir
	tok := p.lucidctl("token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: %s", tok.errOut)
	}
	p.getenv["LUCID_TOKEN"] = strings.TrimSpace(tok.out)
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

	// Not fenced: status says so, exit 0, and there is nothing to lift.
	r := p.remote("fence", "status", "--json")
	if r.code != 0 {
		t.Fatalf("fence status: exit %d\n%s", r.code, r.errOut)
	}
	if st := decode[engineapi.FenceStatus](t, r).Hosts[0].Result; st == nil || st.Fenced || st.Height == 0 {
		t.Fatalf("fence status of an unfenced engine: %+v", st)
	}

	// The engine restarts fenced, as after a restore.
	if r := p.lucidctl("down"); r.code != 0 {
		t.Fatalf("down: exit %d\n%s", r.code, r.errOut)
	}
	fence, _ := json.Marshal(engineapi.Fence{Reason: "restored", Backup: "test-backup", RestoredHeight: 1, At: time.Now().UTC()})
	engineDir := filepath.Join(dir, "state", fmt.Sprintf("offset-%d", offsetFence), "data", "engine")
	if err := os.WriteFile(filepath.Join(engineDir, engineapi.FenceFile), fence, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := p.lucidctl("up", "-d", "--no-mtls", "--lucid", lucidBin, "--wait-timeout", "60s"); r.code != 0 {
		t.Fatalf("up again: exit %d\n%s", r.code, r.errOut)
	}

	r = p.remote("fence", "status", "--json")
	p.noSecret("fence status", r)
	if r.code != 3 {
		t.Fatalf("fence status of a fenced engine: exit %d, want 3\n%s%s", r.code, r.out, r.errOut)
	}
	st := decode[engineapi.FenceStatus](t, r).Hosts[0].Result
	if st == nil || !st.Fenced || st.Fence == nil || st.Fence.Backup != "test-backup" {
		t.Fatalf("fence status %+v", st)
	}
	if text := p.remote("fence", "status"); text.code != 3 || !strings.Contains(text.out, "pi: FENCED (restored from backup test-backup") {
		t.Errorf("fence status text: exit %d\n%s%s", text.code, text.out, text.errOut)
	}

	// Above what it holds: refused, naming the missing heights.
	beyond := st.GuardedHeight + 50
	r = p.remote("fence", "lift", "--known-height", strconv.FormatUint(beyond, 10))
	if r.code != 1 || !strings.Contains(r.errOut, fmt.Sprintf("heights %d..%d are missing", st.GuardedHeight+1, beyond)) || !strings.Contains(r.errOut, "--blocks-from") {
		t.Errorf("lift above the engine's height: exit %d\n%s", r.code, r.errOut)
	}
	// Accepting the fork must be confirmed.
	r = p.remote("fence", "lift", "--known-height", strconv.FormatUint(beyond, 10), "--accept-fork")
	if r.code != 2 || !strings.Contains(r.errOut, "VOIDS heights") || !strings.Contains(r.errOut, "the fork was not accepted") {
		t.Errorf("an unconfirmed --accept-fork: exit %d\n%s", r.code, r.errOut)
	}
	if r := p.remote("fence", "lift"); r.code != 2 {
		t.Errorf("lift without a height: exit %d\n%s", r.code, r.errOut)
	}

	// The newest receipt's height is held: lifted.
	r = p.remote("fence", "lift", "--receipt", receipt, "--json")
	p.noSecret("fence lift", r)
	if r.code != 0 {
		t.Fatalf("lift with the receipt: exit %d\n%s", r.code, r.errOut)
	}
	lifted := decode[maintenance.LiftResult](t, r).Hosts[0].Result
	if lifted == nil || lifted.KnownFrom != "receipt" || lifted.KnownHeight == 0 || lifted.KnownHeight > st.Height || lifted.Status.Fenced {
		t.Fatalf("lift result %+v", lifted)
	}
	if r := p.remote("fence", "status"); r.code != 0 || !strings.Contains(r.out, "pi: not fenced") {
		t.Errorf("status after the lift: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
	if r := p.remote("fence", "lift", "--known-height", "1"); r.code != 1 || !strings.Contains(r.errOut, "not fenced") {
		t.Errorf("lifting again: exit %d\n%s", r.code, r.errOut)
	}
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
