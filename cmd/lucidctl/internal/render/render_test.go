package render

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
)

func render(t *testing.T, dir string, json bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.JSON = json
	opts := &Options{Env: env, Dir: dir}
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--dry-run":
			opts.DryRun = true
		case "--set":
			i++
			opts.Set = append(opts.Set, args[i])
		}
	}
	err = run(context.Background(), opts)
	return out.String(), errOut.String(), err
}

func TestRenderWritesThenKeeps(t *testing.T) {
	dir := t.TempDir()
	out, errOut, err := render(t, dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "created   configs/docker/docker-compose.core.yml") || !strings.Contains(errOut, "generated JWT_SECRET_KEY") {
		t.Errorf("first render: stdout %q stderr %q", out, errOut)
	}
	envPath := filepath.Join(dir, deployfiles.EnvPath)
	fi, err := os.Stat(envPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file: %v %v", err, fi.Mode())
	}
	before, _ := envfile.Read(envPath)

	out, errOut, err = render(t, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	var o Output
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		t.Fatalf("--json: %v: %q", err, out)
	}
	if len(o.Generated) != 0 || o.Files[0].Status != "unchanged" || o.Files[1].Status != "unchanged" {
		t.Errorf("second render: %+v (stderr %q)", o, errOut)
	}
	after, _ := envfile.Read(envPath)
	for _, k := range deployfiles.Secrets {
		if before[k] == "" || before[k] != after[k] {
			t.Errorf("%s not kept", k)
		}
		if strings.Contains(out+errOut, before[k]) {
			t.Errorf("%s reached the output", k)
		}
	}
}

func TestRenderDryRunRedactsAndWritesNothing(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := render(t, dir, false); err != nil {
		t.Fatal(err)
	}
	secrets, _ := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))
	envBefore, _ := os.ReadFile(filepath.Join(dir, deployfiles.EnvPath))

	out, _, err := render(t, dir, false, "--dry-run", "--set", "REDIS_URL=redis://u:pw@lucid-redis:6379/0", "--set", "JWT_SECRET_KEY=an-operator-chosen-secret-of-enough-length")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--- a/configs/environment/.env.core", "-REDIS_URL=", "+REDIS_URL=redis://u:xxxxx@lucid-redis:6379/0", "+JWT_SECRET_KEY=<redacted, changed>", " LUCID_MESH_TOKEN=<redacted>"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run diff lacks %q:\n%s", want, out)
		}
	}
	for _, leak := range []string{"pw@", "an-operator-chosen", secrets["JWT_SECRET_KEY"], secrets["LUCID_MESH_TOKEN"]} {
		if strings.Contains(out, leak) {
			t.Errorf("dry-run output shows %q", leak)
		}
	}
	envAfter, _ := os.ReadFile(filepath.Join(dir, deployfiles.EnvPath))
	if string(envBefore) != string(envAfter) {
		t.Error("--dry-run wrote the env file")
	}
}

func TestRenderRefusesBadSet(t *testing.T) {
	_, _, err := render(t, t.TempDir(), false, "--set", "not a key=1")
	if cli.ExitCode(context.Background(), err) != cli.ExitUsage {
		t.Fatalf("bad --set: %v, want a usage error", err)
	}
	// A trailing backslash would escape the closing quote for both compose
	// parsers and swallow the next lines.
	dir := t.TempDir()
	_, errOut, err := render(t, dir, false, "--set", `JWT_SECRET_KEY=TOPSECRET\`)
	if cli.ExitCode(context.Background(), err) != cli.ExitUsage || !strings.Contains(err.Error(), "JWT_SECRET_KEY") || strings.Contains(err.Error()+errOut, "TOPSECRET") {
		t.Fatalf("--set of an unwritable value: %v, want a usage error naming the key only", err)
	}
	if _, err := os.Stat(filepath.Join(dir, deployfiles.EnvPath)); err == nil {
		t.Error("render wrote the env file despite a refused --set")
	}
}

// TestRenderRefusesAPortOffsetPastThePorts: an offset that would publish
// a port past 65535, or below the one given, is a usage error, and nothing
// is written; the library refuses it too.
func TestRenderRefusesAPortOffsetPastThePorts(t *testing.T) {
	for _, off := range []int{70000, -8000, deployfiles.MaxPortOffset + 1} {
		dir := t.TempDir()
		io, _, _, _ := iostreams.Test()
		err := run(context.Background(), &Options{Env: cli.NewEnv(io, func(string) string { return "" }), Dir: dir, PortOffset: off})
		if cli.ExitCode(context.Background(), err) != cli.ExitUsage || !strings.Contains(fmt.Sprint(err), "--port-offset") {
			t.Errorf("--port-offset %d: %v, want a usage error", off, err)
		}
		if _, err := os.Stat(filepath.Join(dir, deployfiles.ComposePath)); err == nil {
			t.Errorf("--port-offset %d: a compose file was written", off)
		}
		if _, err := deployfiles.Render(context.Background(), deployfiles.Options{PortOffset: off}); err == nil {
			t.Errorf("deployfiles.Render took the port offset %d", off)
		}
	}
	_, err := deployfiles.Render(context.Background(), deployfiles.Options{PortOffset: 100, TLS: &deployfiles.TLS{HTTPSPort: 65500, HTTPPort: 80}})
	if err == nil || !strings.Contains(err.Error(), "past 65535") {
		t.Errorf("an HTTPS port shifted past 65535: %v", err)
	}
}

// TestRenderMountsTheProjectsRouteTable: configs/gateway/routes.yaml, when
// the project has one, is checked and mounted, and render says so; a
// broken one stops render before anything is written.
func TestRenderMountsTheProjectsRouteTable(t *testing.T) {
	dir := t.TempDir()
	routes := filepath.Join(dir, filepath.FromSlash(deployfiles.RoutesPath))
	if err := os.MkdirAll(filepath.Dir(routes), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(routes, []byte("routes:\n  - prefix: /x\n    service: engine\n    public: yes please\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := render(t, dir, false); err == nil || !strings.Contains(err.Error(), deployfiles.RoutesPath) || !strings.Contains(err.Error(), "line 4") || cli.ExitCode(context.Background(), err) != cli.ExitProblems {
		t.Errorf("a broken route table: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, deployfiles.ComposePath)); err == nil {
		t.Error("render wrote the compose file despite a broken route table")
	}

	if err := os.WriteFile(routes, []byte("routes:\n  - prefix: /x\n    service: engine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := render(t, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	var o Output
	if err := json.Unmarshal([]byte(out), &o); err != nil || o.Routes != deployfiles.RoutesPath {
		t.Errorf("--json routes = %q (%v)", o.Routes, err)
	}
	compose, _ := os.ReadFile(filepath.Join(dir, deployfiles.ComposePath))
	if !strings.Contains(string(compose), deployfiles.RoutesMount+":ro") {
		t.Errorf("the compose file does not mount the route table:\n%s", compose)
	}
}

// lucid.yaml's tls section with the operator's files: render copies them
// into configs/gateway/tls (0600) for the gateway's read-only mount, a dry
// run names them without their content, and nothing warns; without the
// section render warns that the gateway serves plain HTTP.
func TestRenderTLSFiles(t *testing.T) {
	dir := t.TempDir()
	io, _, _, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	if err := run(context.Background(), &Options{Env: env, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "warning: the gateway serves plain HTTP on every address of the host (port 8080)") {
		t.Errorf("no plain-HTTP warning: %q", errOut.String())
	}

	ca := testenv.NewTestCA(t)
	cert, key := ca.Issue(t, time.Now().Add(time.Hour), "pi.example.net")
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"certs/pi.crt": cert, "certs/pi.key": key, "lucid.yaml": []byte("tls:\n  cert_file: certs/pi.crt\n  key_file: certs/pi.key\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A new run reads lucid.yaml again.
	io, _, out, errOut := iostreams.Test()
	env = cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	if err := run(context.Background(), &Options{Env: env, Dir: dir, DryRun: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), deployfiles.TLSDir+"/tls.key: created (content not shown)") || strings.Contains(out.String(), "PRIVATE KEY") || strings.Contains(out.String(), "CERTIFICATE") {
		t.Errorf("dry run:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(dir, deployfiles.TLSDir)); err == nil {
		t.Error("a dry run wrote the TLS files")
	}
	errOut.Reset()
	if err := run(context.Background(), &Options{Env: env, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(errOut.String(), "plain HTTP") {
		t.Errorf("warned with TLS on: %q", errOut.String())
	}
	got, err := os.ReadFile(filepath.Join(dir, deployfiles.TLSDir, "tls.key"))
	fi, _ := os.Stat(filepath.Join(dir, deployfiles.TLSDir, "tls.key"))
	if err != nil || string(got) != string(key) || fi.Mode().Perm() != 0o600 {
		t.Errorf("the key in %s: %v %v", deployfiles.TLSDir, err, fi.Mode())
	}
	gw, err := envfile.Read(filepath.Join(dir, deployfiles.ServiceEnvPath("gateway")))
	if err != nil || gw[deployfiles.EnvTLSCertFile] != deployfiles.TLSMount+"/tls.crt" {
		t.Errorf("gateway env: %v %v", gw, err)
	}
}

// With a cluster in lucid.yaml render makes the gossip key and a mesh CA
// in configs/mesh/ca (0700, its files 0600, never shown), warns without
// REDIS_URL, and a second render keeps both.
func TestRenderCluster(t *testing.T) {
	dir := t.TempDir()
	yml := "targets:\n  pi1: {host: 10.0.0.1}\n  pi2: {host: 10.0.0.2}\n  pi3: {host: 10.0.0.3}\nclusters:\n  lucid: {hosts: [pi1, pi2, pi3]}\n"
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	run1 := func(dry bool) (string, string) {
		t.Helper()
		io, _, out, errOut := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.ConfigPath = filepath.Join(dir, "lucid.yaml")
		if err := run(context.Background(), &Options{Env: env, Dir: dir, DryRun: dry}); err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String()
	}
	out, errOut := run1(true)
	for _, want := range []string{deployfiles.MeshCASeedDir + "/ca.json: created (content not shown)", deployfiles.MeshCASeedDir + "/bundle.pem: created (content not shown)"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE") || strings.Contains(out, "root_key") || !strings.Contains(out, "CONSUL_LOCAL_CONFIG=<redacted") {
		t.Errorf("dry run shows a secret:\n%s", out)
	}
	if !strings.Contains(errOut, "would generate CONSUL_GOSSIP_KEY") || !strings.Contains(errOut, "would generate a new mesh CA for the cluster in configs/mesh/ca") {
		t.Errorf("dry run stderr: %q", errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, deployfiles.MeshCASeedDir)); err == nil {
		t.Error("a dry run made the CA")
	}

	out, errOut = run1(false)
	if !strings.Contains(out, "created   "+deployfiles.MeshCASeedDir+"/ca.json") || !strings.Contains(errOut, "warning: the cluster's gateways share no rate budget") {
		t.Errorf("render: %q %q", out, errOut)
	}
	seedDir := filepath.Join(dir, filepath.FromSlash(deployfiles.MeshCASeedDir))
	if fi, err := os.Stat(seedDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v %v", seedDir, err, fi.Mode())
	}
	ca1, err := os.ReadFile(filepath.Join(seedDir, "ca.json"))
	if fi, _ := os.Stat(filepath.Join(seedDir, "ca.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.json: %v", err)
	}
	env1, _ := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))

	out, errOut = run1(false)
	ca2, _ := os.ReadFile(filepath.Join(seedDir, "ca.json"))
	env2, _ := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))
	if string(ca1) != string(ca2) || env1[deployfiles.ConsulGossipKey] == "" || env1[deployfiles.ConsulGossipKey] != env2[deployfiles.ConsulGossipKey] {
		t.Error("a second render changed the CA or the gossip key")
	}
	if !strings.Contains(out, "unchanged "+deployfiles.MeshCASeedDir+"/ca.json") || strings.Contains(errOut, "generate") {
		t.Errorf("second render: %q %q", out, errOut)
	}
	// Consul reads the gossip key: no typo to warn of.
	if strings.Contains(errOut, deployfiles.ConsulGossipKey+" in") {
		t.Errorf("the gossip key is called unread: %q", errOut)
	}
}

// TestRenderTightensLooseSecrets: an env file others can read (copied,
// checked out, restored) is made the owner's alone by the next render,
// though its content does not change; a dry run only says so.
func TestRenderTightensLooseSecrets(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := render(t, dir, false); err != nil {
		t.Fatal(err)
	}
	loose := []string{deployfiles.EnvPath, "configs/environment/gateway.env"}
	for _, p := range loose {
		if err := os.Chmod(filepath.Join(dir, p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	_, errOut, err := render(t, dir, false, "--dry-run")
	if err != nil || !strings.Contains(errOut, deployfiles.EnvPath+": others could read its secrets; render would make") || mode(deployfiles.EnvPath) != 0o644 {
		t.Fatalf("dry run: %v, mode %v, stderr %q", err, mode(deployfiles.EnvPath), errOut)
	}
	out, _, err := render(t, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	var o Output
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Tightened, loose) {
		t.Errorf("tightened %v, want %v", o.Tightened, loose)
	}
	for _, p := range loose {
		if m := mode(p); m != 0o600 {
			t.Errorf("%s: mode %v after render", p, m)
		}
	}
}

// TestRenderSetFromStdin: --set KEY=- takes the value from standard input,
// so a secret never sits on a command line; it never reaches the output.
func TestRenderSetFromStdin(t *testing.T) {
	dir := t.TempDir()
	const secret = "typed-in-0123456789abcdefghijklmnopqrstuv"
	io, in, out, errOut := iostreams.Test()
	in.WriteString(secret + "\n")
	env := cli.NewEnv(io, func(string) string { return "" })
	if err := run(context.Background(), &Options{Env: env, Dir: dir, Set: []string{"JWT_SECRET_KEY=-"}}); err != nil {
		t.Fatal(err)
	}
	got, err := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))
	if err != nil || got["JWT_SECRET_KEY"] != secret {
		t.Errorf("JWT_SECRET_KEY = %q (%v), want the line from standard input", got["JWT_SECRET_KEY"], err)
	}
	if strings.Contains(out.String()+errOut.String(), secret) {
		t.Error("the secret reached the output")
	}

	io, _, _, _ = iostreams.Test() // nothing on standard input
	env = cli.NewEnv(io, func(string) string { return "" })
	if err := run(context.Background(), &Options{Env: env, Dir: dir, Set: []string{"JWT_SECRET_KEY=-"}}); err == nil || !strings.Contains(err.Error(), "no value on standard input") {
		t.Errorf("with nothing on standard input: %v", err)
	}
	if err := run(context.Background(), &Options{Env: env, Dir: dir, Set: []string{"JWT_SECRET_KEY=-", "ENCRYPTION_KEY=-"}}); err == nil || !strings.Contains(err.Error(), "one value at most") {
		t.Errorf("two values from standard input: %v", err)
	}
}
