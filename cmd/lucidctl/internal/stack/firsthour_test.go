package stack_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// TestFirstHour follows the README's tour on a project with nothing but Go:
// up says how discovery runs without Consul and status records it;
// verify chain works with no flags against the default (mTLS) stack;
// session push --seal --wait writes a receipt that verify receipt accepts;
// a second stack of just the gateway runs beside the first, starts only
// what the gateway needs, and its down stops it alone.
func TestFirstHour(t *testing.T) {
	if _, err := exec.LookPath("consul"); err == nil {
		t.Skip("a consul on PATH would be supervised; this test is about a machine without one")
	}
	// Nowhere for "auto" to find an agent.
	t.Setenv("LUCID_CONSUL_BIN", "")
	t.Setenv("LUCID_TOOLS_DIR", t.TempDir())
	// Both stacks' ports stay below 32768, out of the kernel's ephemeral
	// range: a test's outgoing connection may hold any port in that range,
	// and a stack listening there would then fail to start.
	const offset, second = 11000, 12000
	p := newProject(t, offset)
	p.write("lucid.yaml", "local:\n  state_dir: state\n  env_file: secrets.env\n  consul: auto\n  port_offset: "+strconv.Itoa(offset)+"\n")
	// Blocks every second, so that a seal comes quickly.
	p.write("secrets.env", "LUCID_BLOCK_INTERVAL=1s\n")
	ctx := context.Background()

	// up, with no flag but the binary: the offset comes from lucid.yaml.
	r := p.lucidctl(ctx, "up", "-d", "--lucid", lucidBin, "--wait-timeout", "60s")
	if r.code != 0 {
		t.Fatalf("up: exit %d\n%s\nsupervisor log:\n%s", r.code, r.errOut, p.read(p.state("logs/supervisor.log")))
	}
	if !strings.Contains(r.errOut, "discovery: static: no Consul agent found") || !strings.Contains(r.errOut, "--consul build") {
		t.Errorf("up did not say it runs without Consul:\n%s", r.errOut)
	}
	st, sr := p.status()
	if sr.code != 0 || st.Discovery != "static" || len(st.Services) != 6 {
		t.Fatalf("status: exit %d, discovery %q, %d services", sr.code, st.Discovery, len(st.Services))
	}
	if text := p.lucidctl(ctx, "status"); !strings.Contains(text.out, "discovery: static") {
		t.Errorf("status does not say how discovery runs:\n%s", text.out)
	}

	// verify chain, no flags: through the gateway, with a token of its own.
	if v := p.lucidctl(ctx, "verify", "chain"); v.code != 0 || !strings.Contains(v.out, "chain OK") {
		t.Errorf("verify chain: exit %d\nstdout %s\nstderr %s", v.code, v.out, v.errOut)
	}

	// session push --seal --wait, then verify receipt offline.
	tok := p.lucidctl(ctx, "token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: %s", tok.errOut)
	}
	t.Setenv("LUCID_TOKEN", strings.TrimSpace(tok.out))
	rec := filepath.Join(p.dir, "rec")
	for i, chunk := range []string{"one", "two", "three"} {
		p.write("rec/"+strconv.Itoa(i), strings.Repeat(chunk, 1000))
	}
	receipt := filepath.Join(p.dir, "receipts", "alice.tlog-proof")
	push := p.lucidctl(ctx, "--json", "session", "push", rec, "--seal", "--wait", "--receipt", receipt, "--wait-timeout", "60s")
	if push.code != 0 {
		t.Fatalf("session push --seal --wait: exit %d\n%s", push.code, push.errOut)
	}
	var pushed struct {
		ReceiptFile string   `json:"receipt_file"`
		Validators  []string `json:"validators"`
		Anchor      struct {
			Status string `json:"status"`
		} `json:"anchor"`
	}
	if err := json.Unmarshal([]byte(push.out), &pushed); err != nil {
		t.Fatalf("push --json: %v\n%s", err, push.out)
	}
	if pushed.Anchor.Status != "sealed" || pushed.ReceiptFile != receipt || len(pushed.Validators) == 0 {
		t.Fatalf("push result %+v", pushed)
	}
	if !strings.Contains(push.errOut, "lucidctl verify receipt "+receipt+" --key "+pushed.Validators[0]) {
		t.Errorf("push does not say how to verify the receipt:\n%s", push.errOut)
	}
	if v := p.lucidctl(ctx, "verify", "receipt", receipt, "--key", pushed.Validators[0]); v.code != 0 {
		t.Errorf("verify receipt: exit %d %s", v.code, v.errOut)
	}
	// --wait without --seal is a usage mistake.
	if u := p.lucidctl(ctx, "session", "push", rec, "--wait"); u.code != 2 {
		t.Errorf("push --wait without --seal: exit %d %s", u.code, u.errOut)
	}

	// A second stack, just the gateway (and the mesh, for its
	// certificate), beside the first.
	t.Cleanup(func() { p.lucidctl(context.Background(), "down", "--port-offset", strconv.Itoa(second)) })
	r = p.lucidctl(ctx, "up", "-d", "gateway", "--port-offset", strconv.Itoa(second), "--lucid", lucidBin, "--wait-timeout", "60s")
	if r.code != 0 {
		t.Fatalf("second up: exit %d\n%s\ngateway log:\n%s", r.code, r.errOut, p.read(fmt.Sprintf("state/offset-%d/logs/gateway.log", second)))
	}
	if !strings.Contains(r.errOut, "gateway runs without engine, anchoring, blocks, datachain") {
		t.Errorf("up gateway does not say what it runs without:\n%s", r.errOut)
	}
	var two statusJSON
	sr = p.lucidctl(ctx, "status", "--json", "--port-offset", strconv.Itoa(second))
	if err := json.Unmarshal([]byte(sr.out), &two); err != nil || sr.code != 0 {
		t.Fatalf("status of the second stack: exit %d %v %s", sr.code, err, sr.errOut)
	}
	var names []string
	for _, s := range two.Services {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"mesh", "gateway"}) {
		t.Errorf("up gateway ran %v, want the mesh and the gateway", names)
	}
	// Its routes to what is not running answer 503; its own health is fine.
	gw := two.service("gateway")
	req, _ := http.NewRequest(http.MethodGet, gw.URL+"/api/v1/anchors/x", nil)
	req.Header.Set("Authorization", "Bearer "+os.Getenv("LUCID_TOKEN"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a route to a service that is not running: %s, want 502 or 503", resp.Status)
	}

	// down --port-offset stops the second stack only.
	if d := p.lucidctl(ctx, "down", "--port-offset", strconv.Itoa(second)); d.code != 0 {
		t.Fatalf("down the second: exit %d %s", d.code, d.errOut)
	}
	for _, s := range two.Services {
		testenv.Eventually(t, 10*time.Second, s.Name+" of the second stack gone", func() bool { return !testenv.ProcessAlive(s.PID) })
	}
	if st, sr := p.status(); sr.code != 0 || !st.Running || len(st.Services) != 6 {
		t.Errorf("the first stack after the second's down: exit %d, running %v", sr.code, st.Running)
	}
	if a := p.lucidctl(ctx, "status", "--port-offset", strconv.Itoa(second)); a.code != 3 || !strings.Contains(a.errOut, "running beside it: the stack at --port-offset "+strconv.Itoa(offset)) {
		t.Errorf("status of the stopped second stack: exit %d %s", a.code, a.errOut)
	}
}
