package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
)

// execute runs the command newCmd makes, with args, in a project whose
// lucid.yaml is yml (none when empty) and whose files are rendered; its
// output is logged when the test fails.
func execute(t *testing.T, newCmd func(*cli.Env) *cobra.Command, yml string, args ...string) error {
	t.Helper()
	dir := t.TempDir()
	if yml != "" {
		if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "lucid-clitest/{service}", ImageTag: "t", NoConsul: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
			t.Fatal(err)
		}
	}
	io, _, out, errOut := iostreams.Test()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
		}
	})
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	cmd := newCmd(env)
	cmd.SetArgs(append(args, "--known-hosts", filepath.Join(t.TempDir(), "known_hosts"), "--no-agent"))
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	return cmd.ExecuteContext(context.Background())
}

const imagesYAML = "images:\n  name: lucid-clitest/{service}\n  tag: t\nplatforms: [linux/amd64]\n"

// TestDeployWithoutArgument: `lucidctl deploy` deploys lucid.yaml's only
// target; with several (or none) it is a usage error naming them.
func TestDeployWithoutArgument(t *testing.T) {
	ctx := context.Background()
	// Port 1 on loopback refuses at once: the deploy got as far as
	// dialling the one target.
	one := "targets:\n  solo: {host: 127.0.0.1, port: 1, user: pi, dir: /opt/lucid}\n" + imagesYAML
	err := execute(t, newDeployCmd, one)
	if err == nil || cli.IsUsage(err) || !strings.HasPrefix(err.Error(), "solo: ") || cli.ExitCode(ctx, err) != cli.ExitAuth {
		t.Errorf("one target: %v (exit %d), want a dial of solo", err, cli.ExitCode(ctx, err))
	}

	several := "targets:\n  pi: {host: a.local}\n  pi2: {host: b.local}\n  pi3: {host: c.local}\ngroups:\n  fleet: [pi, pi2]\n  lab: [pi3]\n" + imagesYAML
	err = execute(t, newDeployCmd, several)
	if cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Fatalf("several targets: %v (exit %d), want a usage error", err, cli.ExitCode(ctx, err))
	}
	for _, name := range []string{"pi, pi2, pi3", "fleet, lab"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("several targets: %q does not name %s", err, name)
		}
	}

	for name, yml := range map[string]string{"no lucid.yaml": "", "no targets": imagesYAML} {
		err = execute(t, newDeployCmd, yml)
		if cli.ExitCode(ctx, err) != cli.ExitUsage || !strings.Contains(cli.Hint(err), "targets:") {
			t.Errorf("%s: %v (exit %d, hint %q), want a usage error saying to add a target", name, err, cli.ExitCode(ctx, err), cli.Hint(err))
		}
	}

	// A name is still a name: an unknown one is a usage error.
	if err = execute(t, newDeployCmd, one, "nosuch"); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("deploy nosuch: %v", err)
	}
}

// TestRollbackAndReleasesArguments: argument mistakes are usage errors.
func TestRollbackAndReleasesArguments(t *testing.T) {
	ctx := context.Background()
	one := "targets:\n  solo: {host: 127.0.0.1, port: 1, user: pi}\n" + imagesYAML
	for _, tc := range []struct {
		name   string
		newCmd func(*cli.Env) *cobra.Command
		args   []string
	}{
		{"rollback without a target", newRollbackCmd, nil},
		{"rollback with too much", newRollbackCmd, []string{"solo", "r1", "r2"}},
		{"rollback of an unknown target", newRollbackCmd, []string{"nosuch"}},
		{"releases without a target", newReleasesCmd, nil},
		{"releases of two", newReleasesCmd, []string{"solo", "solo"}},
		{"releases of an unknown target", newReleasesCmd, []string{"nosuch"}},
	} {
		if err := execute(t, tc.newCmd, one, tc.args...); cli.ExitCode(ctx, err) != cli.ExitUsage {
			t.Errorf("%s: %v (exit %d), want a usage error", tc.name, err, cli.ExitCode(ctx, err))
		}
	}
	if err := execute(t, newRollbackCmd, one, "solo"); cli.ExitCode(ctx, err) != cli.ExitAuth {
		t.Errorf("rollback solo: %v, want a dial of solo", err)
	}
}

// jsonFields lists the JSON fields of t, nested ones as parent.child.
func jsonFields(t *testing.T, typ reflect.Type, prefix string) []string {
	t.Helper()
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[time.Time]() {
		return nil
	}
	var out []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			t.Errorf("%s%s has no json name", prefix, f.Name)
			continue
		}
		out = append(out, prefix+name)
		out = append(out, jsonFields(t, f.Type, prefix+name+".")...)
	}
	return out
}

// TestJSONFields pins the --json output of deploy, rollback and releases,
// documented field by field in docs/deployment.md: fields are added, never
// renamed or removed.
func TestJSONFields(t *testing.T) {
	for _, tc := range []struct {
		what string
		typ  reflect.Type
		want string
	}{
		{"deploy and rollback events", reflect.TypeFor[deploy.Event](),
			"time target step status message bytes total"},
		{"deploy's result line", reflect.TypeFor[resultLine[*deploy.Result]](),
			"step result result.target result.release result.preflight result.preflight.docker result.preflight.compose " +
				"result.preflight.platform result.preflight.free_bytes result.preflight.clock_skew result.preflight.network " +
				"result.sent_bytes result.sent_layers result.kept_layers result.dry_run result.plan result.plan.files_changed " +
				"result.plan.layers_to_send result.plan.bytes_to_send result.plan.services_to_restart result.audit_error"},
		{"rollback's result line", reflect.TypeFor[resultLine[*deploy.RollbackResult]](),
			"step result result.target result.release result.replaced result.audit_error"},
		{"releases", reflect.TypeFor[releasesOutput](),
			"target releases releases.id releases.version releases.created releases.by releases.images releases.status releases.current"},
	} {
		if got := strings.Join(jsonFields(t, tc.typ, ""), " "); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.what, got, tc.want)
		}
	}
	// The steps and statuses are part of the output too.
	steps := []deploy.Step{deploy.StepConnect, deploy.StepPreflight, deploy.StepLock, deploy.StepImages, deploy.StepRelease, deploy.StepPlan,
		deploy.StepUp, deploy.StepHealth, deploy.StepActivate, deploy.StepRollback, deploy.StepPrune,
		deploy.StepRestart, deploy.StepStop, deploy.StepStart, deploy.StepAudit}
	var names []string
	for _, s := range steps {
		names = append(names, string(s))
	}
	if got := strings.Join(names, " "); got != "connect preflight lock images release plan up health activate rollback prune restart stop start audit" {
		t.Errorf("steps %s", got)
	}
	statuses := []deploy.EventStatus{deploy.EventStart, deploy.EventOK, deploy.EventFail, deploy.EventInfo, deploy.EventWarn}
	if !slices.Equal(statuses, []deploy.EventStatus{"start", "ok", "fail", "info", "warn"}) {
		t.Errorf("event statuses %v", statuses)
	}
}

// TestDeployHostsAndSkipUnreachable: --hosts keeps members of what was
// named (another name is a usage error); --skip-unreachable goes on
// without dead hosts, and when none answers that is an SSH failure.
func TestDeployHostsAndSkipUnreachable(t *testing.T) {
	ctx := context.Background()
	yml := "targets:\n  pi1: {host: 127.0.0.1, port: 1, user: pi}\n  pi2: {host: 127.0.0.1, port: 1, user: pi}\ngroups:\n  fleet: [pi1, pi2]\n" + imagesYAML
	if err := execute(t, newDeployCmd, yml, "fleet", "--hosts", "pi3"); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("--hosts pi3: %v, want a usage error", err)
	}
	err := execute(t, newDeployCmd, yml, "fleet")
	if cli.ExitCode(ctx, err) != cli.ExitAuth || !strings.HasPrefix(err.Error(), "pi1: ") || !strings.Contains(cli.Hint(err), "--skip-unreachable") {
		t.Errorf("a dead group: %v (hint %q), want pi1's dial failure and the hint", err, cli.Hint(err))
	}
	err = execute(t, newDeployCmd, yml, "fleet", "--skip-unreachable")
	if cli.ExitCode(ctx, err) != cli.ExitAuth || !strings.Contains(err.Error(), "no host answered: pi1, pi2") {
		t.Errorf("a dead group with --skip-unreachable: %v", err)
	}
	err = execute(t, newDeployCmd, yml, "fleet", "--hosts", "pi2")
	if cli.ExitCode(ctx, err) != cli.ExitAuth || !strings.HasPrefix(err.Error(), "pi2: ") || cli.Hint(err) != "" {
		t.Errorf("--hosts pi2: %v (hint %q), want only pi2 dialled", err, cli.Hint(err))
	}
}

// TestGroupFailure: the hint says where a group deploy left the hosts.
func TestGroupFailure(t *testing.T) {
	cause := errors.New("gate failed")
	for _, tc := range []struct {
		done, untouched []string
		want            string
	}{
		{nil, nil, ""},
		{nil, []string{"pi2", "pi3"}, "the canary pi1 failed; the other 2 host(s) (pi2, pi3) were not touched"},
		{[]string{"pi0"}, []string{"pi2"}, "pi0 run the new release; pi2 were not touched"},
		{[]string{"pi0"}, nil, "pi0 run the new release"},
	} {
		err := groupFailure(cause, "pi1", tc.done, tc.untouched)
		if !errors.Is(err, cause) || cli.Hint(err) != tc.want {
			t.Errorf("%v/%v: %v, hint %q, want %q", tc.done, tc.untouched, err, cli.Hint(err), tc.want)
		}
	}
}
