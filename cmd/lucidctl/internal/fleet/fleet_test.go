package fleet

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
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
