package validate

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/deployfiles"
)

func TestPhase2FileExitsThreeWithJSON(t *testing.T) {
	io, _, out, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.JSON = true
	err := run(context.Background(), &Options{Env: env, ComposeFile: "../../../../testdata/phase2/docker-compose.core.yml"})
	if code := cli.ExitCode(context.Background(), err); code != cli.ExitProblems {
		t.Fatalf("exit %d (%v), want %d", code, err, cli.ExitProblems)
	}
	var o Output
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatalf("stdout is not JSON: %v", err)
	}
	var collision bool
	for _, p := range o.Problems {
		collision = collision || (p.Rule == deployfiles.RulePortCollision && strings.Contains(p.Message, "8086"))
	}
	if !collision {
		t.Errorf("the 8086 clash is not in %+v", o.Problems)
	}
}

// renderedProject is a project directory holding what render writes, and
// a lucid.yaml naming its images.
func renderedProject(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64"})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		p := filepath.Join(dir, rf.Path)
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, rf.Content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte("images:\n  tag: latest-arm64\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRenderedFilesPass(t *testing.T) {
	dir := renderedProject(t)
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	if err := run(context.Background(), &Options{Env: env}); err != nil {
		t.Fatalf("validate of rendered files: %v\n%s", err, out.String())
	}
	if !strings.Contains(errOut.String(), "no problems") {
		t.Errorf("stderr %q", errOut.String())
	}
	// The gateway publishes plain HTTP on every address: a warning on
	// stderr and in --json, and still exit 0.
	if !strings.Contains(errOut.String(), "warning: ") || !strings.Contains(errOut.String(), "(plain-http)") {
		t.Errorf("no plain-HTTP warning on stderr: %q", errOut.String())
	}
	out.Reset()
	env.JSON = true
	if err := run(context.Background(), &Options{Env: env}); err != nil {
		t.Fatal(err)
	}
	var o Output
	if err := json.Unmarshal(out.Bytes(), &o); err != nil || len(o.Problems) != 0 || len(o.Warnings) != 1 || o.Warnings[0].Rule != deployfiles.RulePlainHTTP {
		t.Errorf("--json: %+v %v", o, err)
	}
}

// TestLooseSecretFileIsAProblem: an env file others can read fails
// validate, named with its mode.
func TestLooseSecretFileIsAProblem(t *testing.T) {
	dir := renderedProject(t)
	if err := os.Chmod(filepath.Join(dir, "configs/environment/engine.env"), 0o640); err != nil {
		t.Fatal(err)
	}
	io, _, out, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	err := run(context.Background(), &Options{Env: env})
	var se *cli.SilentError
	if !errors.As(err, &se) || se.Code != cli.ExitProblems || !strings.Contains(out.String(), "configs/environment/engine.env") || !strings.Contains(out.String(), "mode 0640") {
		t.Errorf("validate with a loose env file: %v\n%s", err, out.String())
	}
}
