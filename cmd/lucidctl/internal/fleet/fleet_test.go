package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/sshx"
)

// deadPort is a loopback port nothing listens on: a Pi that is off.
func deadPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return port
}

// fleetEnv is a project with targets pi1 (a real sshd), pi2 (off) and the
// group fleet of both.
func fleetEnv(t *testing.T) (*cli.Env, *testenv.SSHD) {
	t.Helper()
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir := t.TempDir()
	yml := fmt.Sprintf("targets:\n  pi1:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n  pi2:\n    host: 127.0.0.1\n    port: %d\n    user: %s\n    dir: %s\ngroups:\n  fleet: [pi1, pi2]\n",
		s.Host, s.Port, s.User, filepath.Join(dir, "pi1"), deadPort(t), s.User, filepath.Join(dir, "pi2"))
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	return env, s
}

func TestConnectToleratesADeadHostOnlyWhenAsked(t *testing.T) {
	env, s := fleetEnv(t)
	ctx := context.Background()
	f := &Flags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true}, Target: "fleet"}

	if _, err := f.Connect(ctx, env); cli.ExitCode(ctx, err) != cli.ExitAuth || !strings.Contains(err.Error(), "pi2") || !strings.Contains(cli.Hint(err), "--skip-unreachable") {
		t.Fatalf("a dead member without --skip-unreachable: %v (hint %q)", err, cli.Hint(err))
	}

	f.SkipUnreachable = true
	fl, err := f.Connect(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	if len(fl.Hosts) != 1 || fl.Hosts[0].Name != "pi1" || len(fl.Unreachable) != 1 || fl.Unreachable[0].Name != "pi2" {
		t.Fatalf("hosts %v, unreachable %v", fl.Hosts, fl.Unreachable)
	}
	if s := fl.SkippedSummary(); !strings.HasPrefix(s, "skipped 1 unreachable host(s): pi2 (") {
		t.Errorf("summary %q", s)
	}
	var ran []string
	if err := fl.Each(ctx, func(_ context.Context, h *Host) error { ran = append(ran, h.Name); return nil }); err != nil || len(ran) != 1 {
		t.Errorf("Each ran on %v: %v", ran, err)
	}

	// Only dead hosts left: an error even when skipping.
	f.Hosts = []string{"pi2"}
	if _, err := f.Connect(ctx, env); err == nil {
		t.Error("no host answered, and Connect said nothing")
	}
}

// TestSkipUnreachableSkipsOnlyTheUnreachable: a host that answers with a
// key known_hosts does not hold for it (one that may not be the Pi it
// says) is never skipped as unreachable: the command fails, saying why,
// rather than go on and exit 0 without it.
func TestSkipUnreachableSkipsOnlyTheUnreachable(t *testing.T) {
	env, s := fleetEnv(t)
	cfg, err := os.ReadFile(env.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	// pi3 is pi1's sshd under a name known_hosts has no key for.
	extra := fmt.Sprintf("  pi3:\n    host: localhost\n    port: %d\n    user: %s\n", s.Port, s.User)
	cfg = []byte(strings.Replace(string(cfg), "groups:\n", extra+"groups:\n  strange: [pi1, pi3]\n", 1))
	if err := os.WriteFile(env.ConfigPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f := &Flags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true}, Target: "strange", SkipUnreachable: true}
	fl, err := f.Connect(ctx, env)
	if err == nil {
		fl.Close()
		t.Fatal("a host with an unknown key was skipped as unreachable")
	}
	if !errors.Is(err, sshx.ErrUnknownHostKey) || !strings.Contains(cli.Hint(err), "never one whose key or login was refused") {
		t.Errorf("error %v, hint %q", err, cli.Hint(err))
	}
}

func TestNamesAreUsageErrors(t *testing.T) {
	env, _ := fleetEnv(t)
	cfg, err := env.Config()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []Flags{{}, {Target: "nas"}, {Target: "fleet", Hosts: []string{"pi3"}}} {
		if _, err := f.Names(cfg); !cli.IsUsage(err) {
			t.Errorf("%+v: %v, want a usage error", f, err)
		}
	}
	got, err := (&Flags{Target: "fleet", Hosts: []string{"pi2"}}).Names(cfg)
	if err != nil || len(got) != 1 || got[0] != "pi2" {
		t.Errorf("--hosts pi2 gave %v, %v", got, err)
	}
}

func TestOneHostOrAUsageError(t *testing.T) {
	env, _ := fleetEnv(t)
	cfg, err := env.Config()
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&Flags{Target: "fleet"}).One(cfg, "a backup is of one host")
	if !cli.IsUsage(err) || !strings.Contains(err.Error(), "names 2 hosts (pi1, pi2): a backup is of one host") || !strings.Contains(err.Error(), "--hosts NAME") {
		t.Errorf("a group of two: %v, want a usage error naming them and why", err)
	}
	for _, f := range []Flags{{Target: "pi2"}, {Target: "fleet", Hosts: []string{"pi2"}}} {
		if got, err := f.One(cfg, "why"); err != nil || got != "pi2" {
			t.Errorf("%+v: %q, %v, want pi2", f, got, err)
		}
	}
}
