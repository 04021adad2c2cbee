package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root/roottest"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	repository "github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// TestMain makes the test binary act as lucidctl when a test starts it
// again, to kill it mid-backup.
func TestMain(m *testing.M) {
	roottest.RunAsCLI()
	os.Exit(m.Run())
}

// offset is this package's private port offset: the fake services listen
// where the local stack's would (every port below 32768).
const offset = 17000

const operatorToken = "operator-token-of-the-backup-tests-0123456789"

const secretValue = "jwt-secret-that-must-never-be-in-a-backup-in-clear"

// stack is five fake stateful services on the local stack's ports.
type stack struct {
	svcs map[string]*backuptest.Service
}

func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// seedOf is the seed of the random content of a fake service's file.
func seedOf(name string) uint64 {
	c, _ := catalog.Lookup(name)
	return uint64(c.Port)
}

func startStack(t *testing.T, sizes map[string]int) *stack {
	t.Helper()
	return startStackOn(t, "", sizes)
}

// startStackOn is startStack whose services take the operator's
// credentials for host ("": the local stack's), as a deployed host's do.
func startStackOn(t *testing.T, host string, sizes map[string]int) *stack {
	t.Helper()
	st := &stack{svcs: map[string]*backuptest.Service{}}
	for _, name := range backup.Services {
		svc := backuptest.NewService(name, map[string][]byte{name + ".db": random(seedOf(name), sizes[name]+1000)})
		svc.Token, svc.Host = operatorToken, host
		switch name {
		case "engine":
			svc.Facts.Chain = &snapshotapi.ChainFacts{ChainID: "lucid-test", Height: 1234, Root: "cm9vdC1vZi10aGUtdGVzdA=="}
		case "datachain":
			svc.Facts.DataChain = &snapshotapi.DataChainFacts{Chunks: 7, Sessions: 3, SealedSessions: 2, Packs: 1, PackBytes: int64(sizes[name])}
		}
		c, _ := catalog.Lookup(name)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(c.Port+offset))
		if err != nil {
			t.Fatalf("the fake %s: %v", name, err)
		}
		srv := &http.Server{Handler: svc, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		st.svcs[name] = svc
	}
	return st
}

// project is a scratch project whose local stack is the fake one.
type project struct {
	dir, repo string
	id        *age.X25519Identity
}

func newProject(t *testing.T, recipients bool) *project {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the kill test uses Unix signals")
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	p := &project{dir: t.TempDir(), id: id}
	p.repo = filepath.Join(p.dir, "backups")
	yml := fmt.Sprintf("local:\n  env_file: secrets.env\n  port_offset: %d\nbackup:\n  dir: backups\n", offset)
	if recipients {
		yml += "  recipients: [" + id.Recipient().String() + "]\n"
	}
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	env := "LUCID_OPERATOR_TOKEN=" + operatorToken + "\nJWT_SECRET_KEY=" + secretValue + "\n"
	if err := os.WriteFile(filepath.Join(p.dir, "secrets.env"), []byte(env), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type result struct {
	code        int
	out, errOut string
}

func (p *project) lucidctl(t *testing.T, args ...string) result {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	getenv := func(k string) string {
		if strings.HasPrefix(k, "LUCID_") || k == "JWT_SECRET_KEY" {
			return "" // the project's env file, not the machine's
		}
		return os.Getenv(k)
	}
	code := root.Execute(t.Context(), append([]string{"--config", filepath.Join(p.dir, "lucid.yaml")}, args...), io, getenv)
	return result{code: code, out: out.String(), errOut: errOut.String()}
}

func (p *project) backupJSON(t *testing.T, args ...string) backup.Output {
	t.Helper()
	r := p.lucidctl(t, append([]string{"backup", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("backup: exit %d\n%s", r.code, r.errOut)
	}
	var out backup.Output
	if err := json.Unmarshal([]byte(r.out), &out); err != nil {
		t.Fatalf("backup --json: %v\n%s", err, r.out)
	}
	if strings.Contains(r.out+r.errOut, secretValue) || strings.Contains(r.out+r.errOut, operatorToken) {
		t.Fatal("backup printed a secret")
	}
	return out
}

func TestBackupLocalStack(t *testing.T) {
	st := startStack(t, map[string]int{"engine": 3 << 20, "datachain": 5 << 20, "mesh": 10})

	// Without recipients, refused, naming the key and the way out.
	plain := newProject(t, false)
	r := plain.lucidctl(t, "backup")
	if r.code != cli.ExitUsage || !strings.Contains(r.errOut, "backup.recipients") || !strings.Contains(r.errOut, "--plaintext") {
		t.Fatalf("backup without recipients: exit %d\n%s", r.code, r.errOut)
	}
	if r := plain.lucidctl(t, "backup", "--plaintext", "--to", filepath.Join(plain.dir, "plain")); r.code != 0 {
		t.Fatalf("backup --plaintext: exit %d\n%s", r.code, r.errOut)
	}

	p := newProject(t, true)
	// A plaintext repository is never mixed with encrypted backups.
	r = p.lucidctl(t, "backup", "--to", filepath.Join(plain.dir, "plain"))
	if r.code != cli.ExitUsage || !strings.Contains(r.errOut, "plaintext repository") {
		t.Fatalf("an encrypted backup into a plaintext repository: exit %d\n%s", r.code, r.errOut)
	}

	first := p.backupJSON(t)
	if first.Target != "local" || !first.Encrypted || len(first.Services) != 5 || first.Chain == nil || first.Chain.Height != 1234 ||
		first.DataChain == nil || first.DataChain.Chunks != 7 || len(first.EnvFiles) != 1 || first.Totals.BytesSent == 0 {
		t.Fatalf("first backup: %+v", first)
	}
	for name, svc := range st.svcs {
		if svc.Live() != 0 {
			t.Errorf("%s still holds a copy", name)
		}
	}
	// Nothing changed: nothing is sent again but the env file's piece.
	second := p.backupJSON(t)
	if second.Totals.BytesSent != 0 || second.Totals.PiecesNew != 0 || second.Totals.Bytes != first.Totals.Bytes {
		t.Fatalf("second backup: %+v", second.Totals)
	}
	// A grown file: only its last piece.
	st.svcs["datachain"].Set("datachain.db", append(random(seedOf("datachain"), (5<<20)+1000), random(9, 10)...))
	third := p.backupJSON(t)
	if third.Totals.PiecesNew != 1 || third.Totals.BytesSent != 1000+10 {
		t.Fatalf("third backup: %+v", third.Totals)
	}

	r = p.lucidctl(t, "backup")
	t.Logf("backup:\n%s%s", r.out, r.errOut)
	for _, want := range []string{"height 1234", "7 chunk(s)", "0 B sent (0.0%)", "env files: 1"} {
		if r.code != 0 || !strings.Contains(r.out, want) {
			t.Fatalf("backup: exit %d, stdout lacks %q\n%s%s", r.code, want, r.out, r.errOut)
		}
	}
	r = p.lucidctl(t, "backup", "list")
	if r.code != 0 || strings.Count(r.out, "complete") != 4 || !strings.Contains(r.out, third.ID) {
		t.Fatalf("backup list: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
	// Signed with the operator token's key, which the list trusts.
	if !strings.Contains(r.out, "SIGNATURE") || strings.Count(r.out, "complete  trusted") != 4 {
		t.Fatalf("backup list does not say the backups are signed by a trusted key:\n%s", r.out)
	}

	// verify: with the identity, all intact; a damaged piece is exit 3.
	keyFile := filepath.Join(p.dir, "backup.key")
	if err := os.WriteFile(keyFile, []byte(p.id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := p.lucidctl(t, "backup", "verify", "--identity", keyFile); r.code != 0 || !strings.Contains(r.out, "all present and intact") {
		t.Fatalf("backup verify: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
	other, _ := age.GenerateX25519Identity()
	otherFile := filepath.Join(p.dir, "other.key")
	if err := os.WriteFile(otherFile, []byte(other.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := p.lucidctl(t, "backup", "verify", "--identity", otherFile); r.code != cli.ExitFailure || !strings.Contains(r.errOut, "none of the identities") {
		t.Fatalf("backup verify with another identity: exit %d\n%s", r.code, r.errOut)
	}

	repo, err := repository.OpenRepository(t.Context(), p.repo)
	if err != nil {
		t.Fatal(err)
	}
	b, err := repo.Load(t.Context(), third.ID, []age.Identity{p.id})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := repo.Open(t.Context(), b, repository.EnvService, "secrets.env", []age.Identity{p.id})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil || !strings.Contains(got.String(), secretValue) {
		t.Fatalf("the env file in the backup: %v", err)
	}
	f, err := b.File("engine", "engine.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.repo, "blobs", f.Pieces[0][:2], f.Pieces[0]), []byte("damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := p.lucidctl(t, "backup", "verify", third.ID, "--identity", keyFile); r.code != cli.ExitProblems || !strings.Contains(r.out, f.Pieces[0]) {
		t.Fatalf("backup verify of a damaged piece: exit %d\n%s%s", r.code, r.out, r.errOut)
	}
}

// TestKilledBackupLeavesEarlierOnesIntact kills lucidctl (kill -9) in the
// middle of a backup's transfer.
func TestKilledBackupLeavesEarlierOnesIntact(t *testing.T) {
	st := startStack(t, map[string]int{"engine": 2 << 20, "datachain": 12 << 20})
	p := newProject(t, true)
	first := p.backupJSON(t)
	ids := []age.Identity{p.id}
	before := blobs(t, p.repo)

	// The data chain has new data; its transfer stops after five pieces
	// until lucidctl is killed.
	dc := st.svcs["datachain"]
	dc.Set("datachain.db", random(77, 12<<20))
	base, _ := dc.Reads()
	const pieces = 5
	held := make(chan struct{})
	var once sync.Once
	testDone := make(chan struct{})
	defer close(testDone)
	dc.OnRead = func(r *http.Request, n int) {
		if n <= base+pieces {
			return
		}
		once.Do(func() { close(held) })
		select {
		case <-r.Context().Done():
		case <-testDone:
		}
	}
	cmd := exec.Command(os.Args[0], "--config", filepath.Join(p.dir, "lucid.yaml"), "backup", "--parallel", "2")
	cmd.Env = append(os.Environ(), roottest.EnvAsCLI+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	select {
	case <-held:
	case <-t.Context().Done():
		t.Fatal("the backup never reached the data chain")
	}
	testenv.Eventually(t, 30*time.Second, "the pieces read stored", func() bool { return blobs(t, p.repo) == before+pieces })
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waited = true

	repo, err := repository.OpenRepository(t.Context(), p.repo)
	if err != nil {
		t.Fatal(err)
	}
	all, err := repo.Backups(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].ID != first.ID || all[0].Partial || !all[1].Partial {
		t.Fatalf("after kill -9: %+v\n%s", all, stderr.String())
	}
	if latest, err := repo.Latest(t.Context()); err != nil || latest.ID != first.ID {
		t.Fatalf("latest after kill -9: %+v, %v", latest, err)
	}
	if _, err := repo.Verify(t.Context(), first.ID, ids); err != nil {
		t.Fatalf("the earlier backup after kill -9: %v", err)
	}
	r := p.lucidctl(t, "backup", "list")
	if !strings.Contains(r.out, "PARTIAL") || !strings.Contains(r.out, all[1].ID) {
		t.Fatalf("backup list does not mark the partial backup:\n%s", r.out)
	}

	// The next backup reuses the pieces the killed one stored.
	dc.OnRead = nil
	next := p.backupJSON(t)
	if want := 12 - pieces; next.Totals.PiecesNew != want {
		t.Fatalf("the next backup stored %d new pieces, want %d: %+v", next.Totals.PiecesNew, want, next.Totals)
	}
	if _, err := repo.Verify(t.Context(), next.ID, ids); err != nil {
		t.Fatal(err)
	}
}

// blobs counts the repository's stored blobs (not temporary files).
func blobs(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, "blobs"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestBackupTarget backs up a target through SSH: a real sshd on this
// machine, whose loopback holds the fake services as a Pi's would, taking
// the operator's credentials for that Pi.
func TestBackupTarget(t *testing.T) {
	st := startStackOn(t, "pi", map[string]int{"engine": 1 << 20, "datachain": 2 << 20})
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	p := newProject(t, true)
	deployDir := filepath.Join(t.TempDir(), "production")
	yml, err := os.ReadFile(filepath.Join(p.dir, "lucid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	yml = append(yml, fmt.Sprintf("targets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n", sshd.Host, sshd.Port, sshd.User, deployDir)...)
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), yml, 0o600); err != nil {
		t.Fatal(err)
	}
	// The host's current release, with its env files.
	rel := filepath.Join(deployDir, "releases", "20260101T000000Z-v1")
	envDir := filepath.Join(rel, "configs", "environment")
	if err := os.MkdirAll(envDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"engine.env": "JWT_SECRET_KEY=" + secretValue + "\n", ".env.core": "LUCID_X=1\n"} {
		if err := os.WriteFile(filepath.Join(envDir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("releases/20260101T000000Z-v1", filepath.Join(deployDir, "current")); err != nil {
		t.Fatal(err)
	}
	ssh := []string{"--target", "pi", "--port-offset", strconv.Itoa(offset), "-i", sshd.ClientKey, "--known-hosts", sshd.KnownHosts, "--no-agent"}
	out := p.backupJSON(t, ssh...)
	if out.Target != "pi" || out.Host != sshd.Host || len(out.EnvFiles) != 2 || out.Chain == nil || len(out.Services) != 5 {
		t.Fatalf("target backup: %+v", out)
	}
	for name, svc := range st.svcs {
		if svc.Live() != 0 {
			t.Errorf("%s still holds a copy", name)
		}
	}
	audit, err := os.ReadFile(filepath.Join(deployDir, "audit.log"))
	if err != nil || !strings.Contains(string(audit), `"action":"backup"`) || !strings.Contains(string(audit), out.ID) {
		t.Fatalf("the host's audit log: %v\n%s", err, audit)
	}

	// Another operator token: refused as an authentication failure.
	other := filepath.Join(p.dir, "other.env")
	if err := os.WriteFile(other, []byte("LUCID_OPERATOR_TOKEN=another-token-0123456789abcdef0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := p.lucidctl(t, append([]string{"backup", "--env-file", other}, ssh...)...)
	if r.code != cli.ExitAuth {
		t.Fatalf("backup with another operator token: exit %d\n%s", r.code, r.errOut)
	}
	if audit, _ = os.ReadFile(filepath.Join(deployDir, "audit.log")); !strings.Contains(string(audit), `"result":"failed"`) {
		t.Fatalf("the failed backup is not in the audit log:\n%s", audit)
	}
}

// TestTrustSigners: restore and verify take backups signed by a key of
// backup.signers or the operator token's; with neither they refuse unless
// --allow-unsigned, and a malformed signer is a usage error.
func TestTrustSigners(t *testing.T) {
	ctx := context.Background()
	repo, err := repository.InitRepository(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	key, err := repository.SigningKey("operator-token-of-the-test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &projectconfig.Config{}
	if err := backup.TrustSigners(repo, cfg, "", false); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("no signer and no token: %v, want a usage error", err)
	}
	if err := backup.TrustSigners(repo, cfg, "", true); err != nil {
		t.Errorf("no signer, --allow-unsigned: %v", err)
	}
	if err := backup.TrustSigners(repo, cfg, "operator-token-of-the-test", false); err != nil {
		t.Errorf("the operator token: %v", err)
	}
	cfg.Backup.Signers = []string{repository.SignerOf(key)}
	if err := backup.TrustSigners(repo, cfg, "", false); err != nil {
		t.Errorf("a pinned signer: %v", err)
	}
	cfg.Backup.Signers = []string{"ed25519:nope"}
	if err := backup.TrustSigners(repo, cfg, "", false); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("a malformed signer: %v, want a usage error", err)
	}
}
