package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/projectconfig"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// project is a lucid.yaml naming the throwaway sshd as target pi, with
// rendered files.
func project(t *testing.T, s *testenv.SSHD) (dir, deployDir string) {
	dir = t.TempDir()
	deployDir = filepath.Join(t.TempDir(), "production")
	yml := fmt.Sprintf("targets:\n  pi:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\nimages:\n  name: lucid-clitest/{service}\n  tag: t\nplatforms: [linux/amd64]\n", s.Host, s.Port, s.User, deployDir)
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "lucid-clitest/{service}", ImageTag: "t", NoConsul: true, PortOffset: 22500})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
			t.Fatal(err)
		}
	}
	return dir, deployDir
}

func lucidAmd64(t *testing.T) string {
	out := filepath.Join(t.TempDir(), "lucid")
	if err := imagebuild.Compile(context.Background(), imagebuild.CompileOptions{SourceDir: "../../../..", Platform: v1.Platform{OS: "linux", Architecture: "amd64"}, Out: out, Version: "v0-test", Commit: "test"}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDryRunChangesNothing runs `lucidctl deploy pi --dry-run --json`
// against a real sshd whose Docker is this machine's: one JSON event per
// line, a plan, nothing written, no secret in the output.
func TestDryRunChangesNothing(t *testing.T) {
	if err := exec.Command("docker", "version").Run(); err != nil {
		testenv.Missing(t, "a running Docker Engine")
	}
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir, deployDir := project(t, s)
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.JSON, env.ConfigPath = true, filepath.Join(dir, "lucid.yaml")
	opts := &Options{Env: env, Names: []string{"pi"}, DryRun: true, MinFreeMiB: 16, Image: build.ImageFlags{Base: imagebuild.BaseScratch, Lucid: lucidAmd64(t)}}
	opts.SSH = sshFlags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true}, dockerSocket: "/var/run/docker.sock"}
	if err := runDeploy(context.Background(), opts); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var steps []string
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var e struct{ Step, Status string }
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("stdout line is not JSON: %q", sc.Text())
		}
		steps = append(steps, e.Step+"/"+e.Status)
	}
	// The secrets are checked before the build, and again after preflight.
	want := []string{"secrets/start", "secrets/ok", "preflight/start", "preflight/ok", "secrets/start", "secrets/ok", "plan/ok", "result/"}
	if strings.Join(steps, " ") != strings.Join(want, " ") {
		t.Errorf("events %v, want %v", steps, want)
	}
	if _, err := os.Stat(deployDir); !os.IsNotExist(err) {
		t.Error("a dry run created the deploy directory")
	}
	secrets, _ := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))
	for _, k := range deployfiles.Secrets {
		if strings.Contains(out.String()+errOut.String(), secrets[k]) {
			t.Errorf("%s reached the output", k)
		}
	}
}

// TestUnknownHostExitsFour: an unknown host key is an SSH failure with a
// hint, before anything is built.
func TestUnknownHostExitsFour(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir, _ := project(t, s)
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	// No binary: the host key must stop the deploy before any build.
	opts := &Options{Env: env, Names: []string{"pi"}, Image: build.ImageFlags{Base: imagebuild.BaseScratch, Lucid: filepath.Join(t.TempDir(), "no-such-lucid")}, MinFreeMiB: 16}
	opts.SSH = sshFlags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: filepath.Join(t.TempDir(), "known_hosts"), NoAgent: true}}
	err := runDeploy(context.Background(), opts)
	if code := cli.ExitCode(context.Background(), err); code != cli.ExitAuth || !strings.Contains(cli.Hint(err), "--accept-new-host-key") {
		t.Fatalf("exit %d (%v), hint %q", code, err, cli.Hint(err))
	}
}

// TestRouteTableGoesOnlyWhenMounted: a route table the compose file mounts
// is read for the release; one it does not mount stops the deploy, since
// the Pi would silently run the default table.
func TestRouteTableGoesOnlyWhenMounted(t *testing.T) {
	dir := t.TempDir()
	cfg := projectconfig.Default(dir)
	table := []byte("routes:\n  - prefix: /x\n    service: engine\n")
	write := func(routes []byte) {
		t.Helper()
		f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag, NoConsul: true, Routes: routes})
		if err != nil {
			t.Fatal(err)
		}
		for _, rf := range append(f.All(), deployfiles.File{Path: deployfiles.RoutesPath, Content: table}) {
			if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(nil)
	if _, err := readRendered(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "does not mount it") {
		t.Errorf("an unmounted route table: %v", err)
	}
	write(table)
	r, err := readRendered(context.Background(), cfg)
	if err != nil {
		t.Fatalf("a mounted route table: %v", err)
	}
	if string(r.routes) != string(table) {
		t.Errorf("the release would carry %q as its route table", r.routes)
	}
}

// TestOnlyContainersEnvFilesAreShipped: a deploy reads each container's
// own env file and never the operator's; a compose file from before
// per-service env files (every service reading .env.core) is refused
// with the way out.
func TestOnlyContainersEnvFilesAreShipped(t *testing.T) {
	dir := t.TempDir()
	cfg := projectconfig.Default(dir)
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
			t.Fatal(err)
		}
	}
	r, err := readRendered(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.envs[deployfiles.EnvPath]; ok || len(r.envs) != len(f.ServiceEnvNames) {
		t.Errorf("shipped env files %v, want the %d containers' own", slices.Collect(maps.Keys(r.envs)), len(f.ServiceEnvNames))
	}
	old := strings.ReplaceAll(string(f.Compose), "../environment/gateway.env", "../environment/.env.core")
	if err := envfile.WriteAtomic(filepath.Join(dir, deployfiles.ComposePath), []byte(old)); err != nil {
		t.Fatal(err)
	}
	if _, err := readRendered(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "render again") {
		t.Errorf("a compose file giving the gateway the operator's env file: %v", err)
	}
}

// TestTLSFilesGoAsLucidYAMLNamesThem: the rendered TLS files the compose
// file mounts are read for the release while they are lucid.yaml's; a
// certificate renewed since the render, or a tls section the render did
// not see, stops the deploy with "render again".
func TestTLSFilesGoAsLucidYAMLNamesThem(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewTestCA(t)
	cert, key := ca.Issue(t, time.Now().Add(time.Hour), "pi.example.net")
	for name, b := range map[string][]byte{"pi.crt": cert, "pi.key": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := projectconfig.Default(dir)
	write := func(tlsOpts *deployfiles.TLS) {
		t.Helper()
		f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag, NoConsul: true, TLS: tlsOpts})
		if err != nil {
			t.Fatal(err)
		}
		for _, rf := range f.All() {
			if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(nil)
	cfg.TLS = &projectconfig.TLS{CertFile: "pi.crt", KeyFile: "pi.key", HTTPSPort: 443, HTTPPort: 80}
	if _, err := readRendered(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "does not mount") || !strings.Contains(cli.Hint(err), "lucidctl render") {
		t.Errorf("a tls section the render did not see: %v", err)
	}
	write(&deployfiles.TLS{Cert: cert, Key: key, HTTPSPort: 443, HTTPPort: 80})
	r, err := readRendered(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.tls[deployfiles.TLSCertName]) != string(cert) || string(r.tls[deployfiles.TLSKeyName]) != string(key) || len(r.tls) != 2 {
		t.Errorf("the release would carry %d TLS files", len(r.tls))
	}
	renewed, _ := ca.Issue(t, time.Now().Add(2*time.Hour), "pi.example.net")
	if err := os.WriteFile(filepath.Join(dir, "pi.crt"), renewed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readRendered(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "renewed since the last render") || strings.Contains(err.Error(), "PRIVATE") {
		t.Errorf("a certificate renewed since the render: %v", err)
	}
	cfg.TLS = nil
	if _, err := readRendered(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "does not name") {
		t.Errorf("a mount lucid.yaml no longer names: %v", err)
	}
}
