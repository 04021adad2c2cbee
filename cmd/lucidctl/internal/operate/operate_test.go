package operate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/sshx"
)

// project is a lucid.yaml with pi1 (a real sshd), pi2 (off) and the group
// fleet of both; it returns the path and the sshd.
func project(t *testing.T) (string, *testenv.SSHD) {
	t.Helper()
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	yml := fmt.Sprintf("targets:\n  pi1:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n  pi2:\n    host: 127.0.0.1\n    port: %d\n    user: %s\n    dir: %s\ngroups:\n  fleet: [pi1, pi2]\n",
		s.Host, s.Port, s.User, filepath.Join(dir, "pi1"), dead, s.User, filepath.Join(dir, "pi2"))
	p := filepath.Join(dir, "lucid.yaml")
	if err := os.WriteFile(p, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, s
}

// run runs the command called name (restart, stop, start, prune, audit)
// with args; it returns stdout, stderr and the error.
func run(t *testing.T, yml string, s *testenv.SSHD, jsonOut bool, args ...string) (string, string, error) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath, env.JSON = yml, jsonOut
	var cmd *cobra.Command
	for _, c := range NewCmds(env) {
		if c.Name() == args[0] {
			cmd = c
		}
	}
	cmd.SetArgs(append(args[1:], "-i", s.ClientKey, "--known-hosts", s.KnownHosts, "--no-agent"))
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestUsageErrors(t *testing.T) {
	yml, s := project(t)
	ctx := context.Background()
	for _, args := range [][]string{
		{"restart", "gateway"},                           // no --target
		{"restart", "--target", "fleet", "gatewai"},      // no such service
		{"stop", "--target", "nas"},                      // no such target
		{"start", "--target", "fleet", "--hosts", "pi3"}, // not a member
		{"prune", "--target", "pi1", "extra"},
		{"prune", "--target", "pi1", "--keep", "0"},
		{"audit", "--target", "pi1", "--since", "yesterday"},
		{"audit", "--target", "pi1", "--since", "-1h"},
		{"audit", "pi1"},
	} {
		if _, _, err := run(t, yml, s, false, args...); cli.ExitCode(ctx, err) != cli.ExitUsage {
			t.Errorf("%v: %v (exit %d), want a usage error", args, err, cli.ExitCode(ctx, err))
		}
	}
}

// TestSkipUnreachable: a dead member fails the command (exit 4) unless
// --skip-unreachable, which names it and goes on with the live one: the
// audit trail of pi1 is read, and a restart there says nothing is
// deployed.
func TestSkipUnreachable(t *testing.T) {
	yml, s := project(t)
	ctx := context.Background()
	if _, _, err := run(t, yml, s, false, "audit", "--target", "fleet"); cli.ExitCode(ctx, err) != cli.ExitAuth {
		t.Fatalf("audit of a group with a dead member: %v, want exit 4", err)
	}

	// An entry on pi1, written as any action writes it.
	c, err := sshx.Dial(ctx, sshx.Target{Host: s.Host, Port: s.Port, User: s.User}, sshx.Options{KeyFiles: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true, ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := deploy.New(deploy.Config{Name: "pi1", SSH: c, Dir: filepath.Join(filepath.Dir(yml), "pi1")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Audit(ctx, deploy.AuditEntry{Action: deploy.AuditMaintenance, Args: []string{"compact", "blocks"}, Release: "r1"}); err != nil {
		t.Fatal(err)
	}

	out, errOut, err := run(t, yml, s, true, "audit", "--target", "fleet", "--skip-unreachable", "--since", "1h")
	if err != nil {
		t.Fatalf("audit --skip-unreachable: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "skipped 1 unreachable host(s): pi2") {
		t.Errorf("stderr does not name the skipped host: %q", errOut)
	}
	var got auditOutput
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if len(got.Entries) != 1 || got.Entries[0].Action != deploy.AuditMaintenance || got.Entries[0].Key != c.KeyFingerprint() ||
		got.Entries[0].Result != deploy.AuditOK || len(got.Unreachable) != 1 || got.Unreachable[0].Target != "pi2" {
		t.Errorf("audit --json: %+v", got)
	}
	// Nothing since a time after the entry.
	out, _, err = run(t, yml, s, false, "audit", "--target", "pi1", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if err != nil || strings.Contains(out, "maintenance") || !strings.HasPrefix(out, "TIME") {
		t.Errorf("audit --since later: %v\n%s", err, out)
	}

	_, errOut, err = run(t, yml, s, false, "restart", "--target", "fleet", "--skip-unreachable", "gateway")
	if err == nil || !strings.Contains(err.Error(), "nothing is deployed") || !strings.Contains(errOut, "skipped 1 unreachable host(s): pi2") {
		t.Errorf("restart on a host without a release: %v\n%s", err, errOut)
	}
	// The refused restart is on the trail too.
	out, _, err = run(t, yml, s, false, "audit", "--target", "pi1")
	if err != nil || !bytes.Contains([]byte(out), []byte("restart")) || !strings.Contains(out, "failed: pi1: no such release") {
		t.Errorf("audit after the restart: %v\n%s", err, out)
	}
}

// TestJSONShapes pins the --json documents of docs/cli.md: fields are
// added, never renamed or removed.
func TestJSONShapes(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{serviceOutput{Hosts: []*deploy.ServiceResult{{Dependants: []string{"x"}, AuditError: "x"}}},
			`{"hosts":[{"target":"","action":"","release":"","services":null,"dependants":["x"],"audit_error":"x"}],"unreachable":null}`},
		{pruneOutput{Hosts: []*deploy.PruneResult{{Items: []deploy.PruneItem{{Error: "x"}}}}},
			`{"hosts":[{"target":"","dry_run":false,"kept":null,"items":[{"kind":"","name":"","bytes":0,"error":"x"}],"total_bytes":0}],"total_bytes":0,"unreachable":null}`},
		{auditOutput{Entries: []deploy.AuditEntry{{Services: []string{"x"}, Args: []string{"x"}, Release: "x", Error: "x"}}, Unreachable: []unreachableOutput{{}}},
			`{"entries":[{"time":"0001-01-01T00:00:00Z","target":"","user":"","host":"","key":"","action":"","services":["x"],"args":["x"],"release":"x","result":"","error":"x"}],"unreachable":[{"target":"","error":""}]}`},
	} {
		got, err := json.Marshal(tc.v)
		if err != nil || string(got) != tc.want {
			t.Errorf("got  %s (%v)\nwant %s", got, err, tc.want)
		}
	}
}

// TestServiceEventsCannotDriveTheTerminal: restart's and stop's events
// are printed with a host's control characters escaped.
func TestServiceEventsCannotDriveTheTerminal(t *testing.T) {
	var w bytes.Buffer
	newEventPrinter(&w).Event(deploy.Event{Target: "pi2", Step: deploy.StepQuorum, Status: deploy.EventFail, Message: "held by \x1b[2Jbob"})
	if strings.Contains(w.String(), "\x1b") {
		t.Errorf("printed %q", w.String())
	}
}
