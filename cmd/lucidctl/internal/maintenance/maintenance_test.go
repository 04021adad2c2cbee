package maintenance_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/maintenance"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root/roottest"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/packstore"
)

// lucidBin is the lucid binary the stack runs, built once.
var lucidBin string

// TestMain builds lucid, and makes the test binary act as lucidctl when `up
// -d` starts it again as the background supervisor.
func TestMain(m *testing.M) { roottest.Main(m, testenv.BuildLucid, &lucidBin) }

// Private port offsets of the tests' stacks. Their ports stay below 32768,
// out of the kernel's ephemeral range, where another test's outgoing
// connection could hold one of them.
const (
	offset       = 13000
	offsetNoMTLS = 14000
)

type result struct {
	code        int
	out, errOut string
}

// project is a scratch project whose local stack (lucidctl up) is also its
// target "pi": a real sshd on this machine, through which the stack's
// loopback ports are reached exactly as on a Pi.
type project struct {
	t      *testing.T
	dir    string
	offset int
	sshd   *testenv.SSHD
	getenv map[string]string
	secret string // the operator token
}

// newProject starts sshd, then the project's stack at offset with the up
// flags given.
func newProject(t *testing.T, offset int, upArgs ...string) *project {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the stack tests use Unix signals")
	}
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir := t.TempDir()
	p := &project{t: t, dir: dir, offset: offset, sshd: sshd, getenv: map[string]string{}}
	// The stack is target pi (local.name): its services take the
	// operator's credentials for pi, as that Pi's would.
	yml := fmt.Sprintf("local:\n  name: pi\n  state_dir: state\n  env_file: secrets.env\n  consul: \"off\"\n  port_offset: %d\ntargets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n",
		offset, sshd.Host, sshd.Port, sshd.User, filepath.Join(dir, "pi"))
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	// Blocks every second, so that seals and voter changes come quickly.
	if err := os.WriteFile(filepath.Join(dir, "secrets.env"), []byte("LUCID_BLOCK_INTERVAL=1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.lucidctl("down") })
	if r := p.lucidctl(append([]string{"up", "-d", "--lucid", lucidBin, "--wait-timeout", "60s"}, upArgs...)...); r.code != 0 {
		t.Fatalf("up: exit %d\n%s", r.code, r.errOut)
	}
	vars, err := envfile.Read(filepath.Join(dir, "secrets.env"))
	if err != nil || len(vars["LUCID_OPERATOR_TOKEN"]) < 32 {
		t.Fatalf("the operator token was not generated: %v", err)
	}
	p.secret = vars["LUCID_OPERATOR_TOKEN"]
	return p
}

// noSecret fails the test when r printed the operator token.
func (p *project) noSecret(what string, r result) {
	p.t.Helper()
	if strings.Contains(r.out+r.errOut, p.secret) {
		p.t.Errorf("%s printed the operator token", what)
	}
}

func (p *project) lucidctl(args ...string) result {
	p.t.Helper()
	io, _, out, errOut := iostreams.Test()
	getenv := func(k string) string {
		if v, ok := p.getenv[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	code := root.Execute(context.Background(), append([]string{"--config", filepath.Join(p.dir, "lucid.yaml")}, args...), io, getenv)
	return result{code, out.String(), errOut.String()}
}

// remote runs a maintenance command on target pi.
func (p *project) remote(args ...string) result {
	p.t.Helper()
	ssh := []string{"--target", "pi", "--port-offset", strconv.Itoa(p.offset), "-i", p.sshd.ClientKey, "--known-hosts", p.sshd.KnownHosts, "--no-agent"}
	return p.lucidctl(append(append([]string{"maintenance"}, args...), ssh...)...)
}

func decode[T any](t *testing.T, r result) maintenance.Output[T] {
	t.Helper()
	var out maintenance.Output[T]
	if err := json.Unmarshal([]byte(r.out), &out); err != nil || len(out.Hosts) != 1 || out.Hosts[0].Host != "pi" {
		t.Fatalf("--json: %v\nstdout %s\nstderr %s", err, r.out, r.errOut)
	}
	return out
}

// TestMaintenanceThroughSSH drives every maintenance command end to end:
// lucidctl, a real sshd, and a real stack with the mesh on, where every
// service is verified by its mesh certificate.
func TestMaintenanceThroughSSH(t *testing.T) {
	p := newProject(t, offset)
	dir, noSecret := p.dir, p.noSecret
	// A sealed session of three chunks.
	tok := p.lucidctl("token", "--sub", "alice")
	if tok.code != 0 {
		t.Fatalf("token: %s", tok.errOut)
	}
	p.getenv["LUCID_TOKEN"] = strings.TrimSpace(tok.out)
	for i, chunk := range []string{"one", "two", "three"} {
		if err := os.MkdirAll(filepath.Join(dir, "rec"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "rec", strconv.Itoa(i)), []byte(strings.Repeat(chunk, 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if r := p.lucidctl("session", "push", filepath.Join(dir, "rec"), "--seal", "--wait", "--receipt", filepath.Join(dir, "receipt.tlog-proof"), "--wait-timeout", "60s"); r.code != 0 {
		t.Fatalf("session push: exit %d\n%s", r.code, r.errOut)
	}

	// scrub: every chunk checked, nothing damaged.
	r := p.remote("scrub", "--json")
	noSecret("scrub", r)
	if r.code != 0 {
		t.Fatalf("scrub: exit %d\n%s", r.code, r.errOut)
	}
	scrub := decode[packstore.ScrubReport](t, r)
	if rep := scrub.Hosts[0].Result; rep == nil || rep.Chunks != 3 || len(rep.Damaged) != 0 {
		t.Fatalf("scrub result %+v", scrub.Hosts[0])
	}
	if !strings.Contains(r.errOut, "pi: scrubbing 3 chunk(s) in 1 pack(s)") || !strings.Contains(r.errOut, "pi: scrubbed 3 chunk(s)") {
		t.Errorf("scrub progress:\n%s", r.errOut)
	}
	if text := p.remote("scrub"); text.code != 0 || !strings.Contains(text.out, "pi: scrub OK: 3 chunk(s)") {
		t.Errorf("scrub text: exit %d\n%s%s", text.code, text.out, text.errOut)
	}

	// The local stack (no --target) is local.port_offset's; a
	// --port-offset 0 given names the stack at 0 (none runs there), and
	// the flags that reach hosts are refused rather than ignored.
	if local := p.lucidctl("maintenance", "scrub"); local.code != 0 {
		t.Errorf("scrub of the local stack: exit %d\n%s", local.code, local.errOut)
	}
	if zero := p.lucidctl("maintenance", "scrub", "--port-offset", "0"); zero.code == 0 {
		t.Errorf("scrub --port-offset 0 reached the stack at offset %d:\n%s", offset, zero.out)
	}
	for _, flag := range [][]string{{"-i", p.sshd.ClientKey}, {"--skip-unreachable"}, {"--known-hosts", p.sshd.KnownHosts}} {
		if r := p.lucidctl(append([]string{"maintenance", "scrub"}, flag...)...); r.code != 2 || !strings.Contains(r.errOut, "needs --target") {
			t.Errorf("scrub %v without --target: exit %d\n%s", flag, r.code, r.errOut)
		}
	}

	// compact: nothing deleted, nothing to reclaim, and it says so.
	r = p.remote("compact", "--json")
	noSecret("compact", r)
	if r.code != 0 {
		t.Fatalf("compact: exit %d\n%s", r.code, r.errOut)
	}
	if c := decode[maintenance.CompactResult](t, r).Hosts[0].Result; c == nil || c.ReclaimedBytes != 0 || c.DeadBytesAfter != 0 {
		t.Errorf("compact result %+v", c)
	}
	if !strings.Contains(r.errOut, "pi: compacting: 1 pack(s)") {
		t.Errorf("compact progress:\n%s", r.errOut)
	}

	// Both are in the host's audit trail, with the key that ran them.
	trail, err := os.ReadFile(filepath.Join(dir, "pi", deploy.AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"datachain.scrub", "datachain.compact"} {
		if !strings.Contains(string(trail), `"action":"maintenance","args":["`+action+`"]`) || !strings.Contains(string(trail), `"key":"SHA256:`) {
			t.Errorf("the audit trail lacks %s:\n%s", action, trail)
		}
	}

	// A wrong operator token is an authentication failure, and is not
	// printed either.
	p.getenv["LUCID_OPERATOR_TOKEN"] = "wrong-operator-token-0123456789abcdef-0123456789"
	r = p.remote("compact")
	if r.code != 4 || strings.Contains(r.out+r.errOut, "wrong-operator-token") || !strings.Contains(r.errOut, "403") {
		t.Errorf("a wrong operator token: exit %d\n%s", r.code, r.errOut)
	}
	delete(p.getenv, "LUCID_OPERATOR_TOKEN")

	// voters: one node, the leader; what the engine allows with it.
	r = p.remote("voters", "list", "--json")
	if r.code != 0 {
		t.Fatalf("voters list: exit %d\n%s", r.code, r.errOut)
	}
	st := decode[engineapi.ConsensusStatus](t, r).Hosts[0].Result
	if st == nil || st.State != "leader" || len(st.Servers) != 1 || !st.Servers[0].Voter || st.ValidatorKey == "" {
		t.Fatalf("voters list %+v", st)
	}
	r = p.remote("voters", "remove", st.NodeID, "--key", st.ValidatorKey)
	noSecret("voters remove", r)
	if r.code != 1 || !strings.Contains(r.errOut, "the leader cannot remove its own validator key") {
		t.Errorf("removing the leader's own key: exit %d\n%s", r.code, r.errOut)
	}
	r = p.remote("voters", "add", "pi2", "--address", "127.0.0.1:1", "--key", "not-a-key")
	if r.code != 1 || !strings.Contains(r.errOut, "invalid voter") {
		t.Errorf("adding a voter with a malformed key: exit %d\n%s", r.code, r.errOut)
	}
	if r = p.remote("voters", "add", "pi2", "--key", "k"); r.code != 2 || !strings.Contains(r.errOut, "--address") {
		t.Errorf("add without --address: exit %d\n%s", r.code, r.errOut)
	}
	// Removing a node that is not a member changes nothing, and the chain
	// goes on with its one voter.
	r = p.remote("voters", "remove", "ghost", "--json")
	if r.code != 0 {
		t.Fatalf("voters remove ghost: exit %d\n%s", r.code, r.errOut)
	}
	if after := decode[engineapi.ConsensusStatus](t, r).Hosts[0].Result; after == nil || len(after.Servers) != 1 || after.Servers[0].ID != st.NodeID {
		t.Errorf("after removing a non-member: %+v", after)
	}
	if text := p.remote("voters", "list"); text.code != 0 || !strings.Contains(text.out, st.NodeID) || !strings.Contains(text.out, "leader "+st.NodeID) {
		t.Errorf("voters list text: exit %d\n%s%s", text.code, text.out, text.errOut)
	}
	// The trail names the node each change was for, its address and key,
	// and how it ended.
	trail, err = os.ReadFile(filepath.Join(dir, "pi", deploy.AuditFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"args":["chain.voters.remove","ghost"]`, `"args":["chain.voters.add","pi2","--address","127.0.0.1:1","--key","not-a-key"],`, `"args":["chain.voters.remove","` + st.NodeID + `","--key","` + st.ValidatorKey + `"],`} {
		if !strings.Contains(string(trail), want) {
			t.Errorf("the audit trail lacks %s:\n%s", want, trail)
		}
	}

	// fence status over a group with a Pi that is off: skipped, and not
	// knowing whether its engine is fenced is no all-clear.
	gone := testenv.FreePort(t) // nothing listens there
	yml, err := os.ReadFile(filepath.Join(dir, "lucid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	withGone := fmt.Sprintf("%s  gone:\n    host: 127.0.0.1\n    port: %d\n    user: %s\n    dir: %s\ngroups:\n  both: [pi, gone]\n",
		yml, gone, p.sshd.User, filepath.Join(dir, "gone"))
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(withGone), 0o600); err != nil {
		t.Fatal(err)
	}
	ssh := []string{"--port-offset", strconv.Itoa(p.offset), "-i", p.sshd.ClientKey, "--known-hosts", p.sshd.KnownHosts, "--no-agent"}
	r = p.lucidctl(append([]string{"maintenance", "fence", "status", "--target", "both", "--skip-unreachable"}, ssh...)...)
	if r.code != 3 || !strings.Contains(r.out, "pi: not fenced") || !strings.Contains(r.errOut, "whether the engine of gone is fenced is not known") {
		t.Errorf("fence status with a host skipped: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), yml, 0o600); err != nil {
		t.Fatal(err)
	}

	// rotate-ca: the new root is in the authenticated bundle beside the
	// old one, and every internal service still answers, verified by it.
	r = p.remote("rotate-ca", "--json")
	noSecret("rotate-ca", r)
	if r.code != 0 {
		t.Fatalf("rotate-ca: exit %d\n%s", r.code, r.errOut)
	}
	rot := decode[maintenance.RotateResult](t, r).Hosts[0].Result
	if rot == nil || len(rot.Before) != 1 || len(rot.After) != 2 || !slices.Contains(rot.After, rot.Fingerprint) || slices.Contains(rot.Before, rot.Fingerprint) {
		t.Fatalf("rotate-ca result %+v", rot)
	}
	if len(rot.Serving) != 5 {
		t.Errorf("serving after the rotation: %v", rot.Serving)
	}
	// The stack keeps serving: the whole chain of a user's request, and
	// the operator's.
	if st := p.lucidctl("status"); st.code != 0 {
		t.Errorf("status after the rotation: exit %d\n%s%s", st.code, st.out, st.errOut)
	}
	if r := p.remote("scrub"); r.code != 0 {
		t.Errorf("scrub after the rotation: exit %d\n%s", r.code, r.errOut)
	}
	// A second rotation inside the overlap is the controller's to refuse.
	if r := p.remote("rotate-ca"); r.code != 1 || !strings.Contains(r.errOut, "409") {
		t.Errorf("second rotation: exit %d\n%s", r.code, r.errOut)
	}

	// Damage on disk: scrub names it, with its owner, and exits 3.
	pack := filepath.Join(dir, "state", fmt.Sprintf("offset-%d", offset), "data", "datachain", "chunks", "packs", "pack-000001.dat")
	fi, err := os.Stat(pack)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(pack, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0xff}, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r = p.remote("scrub", "--json")
	if r.code != 3 {
		t.Fatalf("scrub of a damaged store: exit %d\n%s", r.code, r.errOut)
	}
	bad := decode[packstore.ScrubReport](t, r).Hosts[0].Result
	if bad == nil || len(bad.Damaged) != 1 || bad.Damaged[0].Owner != "alice" || len(bad.Damaged[0].Sessions) != 1 {
		t.Errorf("damage %+v", bad)
	}
	if !strings.Contains(r.errOut, "the scrub found 1 damaged chunk(s) on pi") {
		t.Errorf("scrub of a damaged store said:\n%s", r.errOut)
	}
}

// TestMaintenanceWithoutMesh: with the mesh off the services speak plain
// HTTP on the host's loopback, and the token goes through SSH alone;
// unless the env file says the mesh is on, when lucidctl refuses to send
// it.
func TestMaintenanceWithoutMesh(t *testing.T) {
	p := newProject(t, offsetNoMTLS, "--no-mtls")
	r := p.remote("scrub", "--json")
	p.noSecret("scrub", r)
	if r.code != 0 {
		t.Fatalf("scrub without the mesh: exit %d\n%s", r.code, r.errOut)
	}
	if rep := decode[packstore.ScrubReport](t, r).Hosts[0].Result; rep == nil || rep.Chunks != 0 {
		t.Errorf("scrub of an empty store: %+v", rep)
	}
	p.getenv["LUCID_MESH_URL"] = "https://127.0.0.1:8088"
	r = p.remote("compact")
	p.noSecret("compact", r)
	if r.code != 1 || !strings.Contains(r.errOut, "refusing to send the operator token in the clear") {
		t.Errorf("plain HTTP where the mesh should be: exit %d\n%s", r.code, r.errOut)
	}
}
