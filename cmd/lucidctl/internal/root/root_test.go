package root

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
)

type result struct {
	code        int
	out, errOut string
}

// execute runs lucidctl in-process with env as its environment.
func execute(t *testing.T, env map[string]string, tty bool, args ...string) result {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	io.SetTTY(tty, tty)
	code := Execute(context.Background(), args, io, func(k string) string { return env[k] })
	return result{code, out.String(), errOut.String()}
}

func TestVersionJSONIsOnlyJSON(t *testing.T) {
	r := execute(t, nil, false, "version", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.errOut)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(r.out), &v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.out)
	}
	for _, k := range []string{"version", "commit", "go_version", "os", "arch"} {
		if _, ok := v[k]; !ok {
			t.Errorf("version --json lacks %q", k)
		}
	}
	if len(v) != 5 {
		t.Errorf("version --json has fields %v; the set is part of the interface", v)
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "lucid.yaml")
	if err := os.WriteFile(bad, []byte("targets:\n  pi:\n    hots: pi.local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"unknown command", []string{"deploi"}, cli.ExitUsage, "unknown command"},
		{"unknown subcommand", []string{"verify", "chian"}, cli.ExitUsage, "see `lucidctl verify --help`"},
		{"unknown flag", []string{"version", "--bogus"}, cli.ExitUsage, "see `lucidctl version --help`"},
		{"bad flag value", []string{"deploy", "--lock-wait", "soon"}, cli.ExitUsage, "see `lucidctl deploy --help`"},
		{"extra argument", []string{"version", "x"}, cli.ExitUsage, "takes no arguments"},
		{"missing argument", []string{"verify", "receipt"}, cli.ExitUsage, "see `lucidctl verify receipt --help`"},
		{"missing flag", []string{"verify", "receipt", "r.json"}, cli.ExitUsage, "needs --key"},
		{"unknown service", []string{"up", "gatewy"}, cli.ExitUsage, `did you mean "gateway"`},
		{"json unsupported", []string{"down", "--json"}, cli.ExitUsage, "has no --json output"},
		{"bad tier", []string{"token", "--tier", "gold"}, cli.ExitUsage, "unknown tier"},
		{"config typo", []string{"--config", bad, "status"}, cli.ExitFailure, `lucid.yaml:3:5: unknown key "hots" in targets.pi (did you mean "host"?)`},
		{"config missing", []string{"--config", filepath.Join(dir, "nope.yaml"), "status"}, cli.ExitFailure, "project file not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := execute(t, nil, false, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tt.code, r.errOut)
			}
			if !strings.Contains(r.errOut, tt.err) {
				t.Errorf("stderr %q lacks %q", r.errOut, tt.err)
			}
			if r.out != "" {
				t.Errorf("an error wrote to stdout: %q", r.out)
			}
		})
	}
}

func TestHintForKnownFailure(t *testing.T) {
	r := execute(t, map[string]string{"JWT_SECRET_KEY": "short"}, false, "token")
	if r.code != cli.ExitFailure || !strings.Contains(r.errOut, "hint: ") {
		t.Errorf("exit %d, stderr %q: want a failure with a hint", r.code, r.errOut)
	}
}

func TestColorOnlyOnATerminal(t *testing.T) {
	plain := execute(t, nil, false, "deploi")
	if strings.Contains(plain.errOut, "\x1b[") {
		t.Errorf("escape codes without a terminal: %q", plain.errOut)
	}
	tty := execute(t, nil, true, "deploi")
	if !strings.Contains(tty.errOut, "\x1b[") {
		t.Errorf("no color on a terminal: %q", tty.errOut)
	}
	noColor := execute(t, nil, true, "--no-color", "deploi")
	if strings.Contains(noColor.errOut, "\x1b[") {
		t.Errorf("escape codes with --no-color: %q", noColor.errOut)
	}
	// The message does not depend on color: "error:" is always there.
	for _, r := range []result{plain, tty, noColor} {
		if !strings.Contains(r.errOut, "error:") {
			t.Errorf("no plain-text error marker: %q", r.errOut)
		}
	}
}

func TestCompletion(t *testing.T) {
	r := execute(t, nil, false, "completion", "bash")
	if r.code != 0 || !strings.Contains(r.out, "lucidctl") {
		t.Errorf("completion bash: exit %d", r.code)
	}
}

// A token in the environment is never shown, not even as a flag default
// in --help.
func TestTokenStaysOutOfHelp(t *testing.T) {
	const secret = "eyJhbGciOiJIUzI1NiJ9.secret-token-payload.sig"
	t.Setenv("LUCID_TOKEN", secret)
	for _, args := range [][]string{{"verify", "chain", "--help"}, {"session", "push", "--help"}} {
		r := execute(t, map[string]string{"LUCID_TOKEN": secret}, false, args...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d: %s", args, r.code, r.errOut)
		}
		if strings.Contains(r.out+r.errOut, secret) {
			t.Errorf("%v printed the token", args)
		}
		if !strings.Contains(r.out, "--token") {
			t.Errorf("%v: no --token in the help:\n%s", args, r.out)
		}
	}
}

// TestEveryCommandChecksItsArguments walks the tree: a command without its
// own argument check would take cobra's default, which accepts anything
// (or answers an untyped error that exits 1 instead of 2).
func TestEveryCommandChecksItsArguments(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" {
			return // cobra's own
		}
		if c.Args == nil {
			t.Errorf("%s has no argument check (use cli.NoArgs, cli.ExactArgs, cli.Subcommands, ...)", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(NewCmd(cli.NewEnv(io, nil)))
}
