package secrets

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
)

// localEnv is a cli.Env for commands on local files, with its output.
func localEnv(jsonOut bool) (*cli.Env, func() (stdout, stderr string)) {
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.JSON = jsonOut
	return env, func() (string, string) { return out.String(), errOut.String() }
}

// runLocal runs `lucidctl secrets args...` on local files only.
func runLocal(t *testing.T, jsonOut bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	env, output := localEnv(jsonOut)
	cmd := NewCmd(env)
	cmd.SetArgs(args)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err = cmd.ExecuteContext(context.Background())
	stdout, stderr = output()
	return stdout, stderr, err
}

// TestRotate: rotate gives the key a new value and moves the old one into
// its previous-values variable, with the retirement time (none for
// ENCRYPTION_KEY); the file stays 0600 with its other lines; no value is
// printed; the next steps are. A second rotation keeps both old values;
// prune drops them once retired.
func TestRotate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	file := filepath.Join(dir, ".env.core")
	f, err := deployfiles.Render(ctx, deployfiles.Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := envfile.WriteAtomic(file, append([]byte("# the operator's comment\n"), f.Env...)); err != nil {
		t.Fatal(err)
	}
	before, err := envfile.Read(file)
	if err != nil {
		t.Fatal(err)
	}
	var printed strings.Builder
	start := time.Now()
	for _, key := range keyring.Rotatable() {
		stdout, stderr, err := runLocal(t, true, "rotate", key, "--env-file", file, "--overlap", "2h")
		if err != nil {
			t.Fatalf("rotate %s: %v\n%s", key, err, stderr)
		}
		printed.WriteString(stdout + stderr)
		var out RotateOutput
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("rotate %s --json: %v\n%s", key, err, stdout)
		}
		if out.Key != key || out.Previous != keyring.PreviousVar[key] {
			t.Errorf("rotate %s: %+v", key, out)
		}
		if !strings.Contains(stderr, "lucidctl render") || !strings.Contains(stderr, "--rotate "+key) {
			t.Errorf("rotate %s does not say the next steps: %s", key, stderr)
		}
	}
	after, err := envfile.Read(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("env file mode: %v %v", fi.Mode(), err)
	}
	if data, _ := os.ReadFile(file); !strings.HasPrefix(string(data), "# the operator's comment\n") {
		t.Error("the operator's comment is gone")
	}
	for _, key := range keyring.Rotatable() {
		if after[key] == before[key] || len(after[key]) < 32 {
			t.Errorf("%s was not given a new value", key)
		}
		prev, err := keyring.Parse(after[keyring.PreviousVar[key]])
		if err != nil || len(prev) != 1 || string(prev[0].Value) != before[key] {
			t.Fatalf("%s: %d previous values (%v), want the old one", keyring.PreviousVar[key], len(prev), err)
		}
		switch until := prev[0].Until; {
		case key == "ENCRYPTION_KEY" && !until.IsZero():
			t.Errorf("the old ENCRYPTION_KEY retires at %s, want never by itself", until)
		case key != "ENCRYPTION_KEY" && (until.Before(start.Add(2*time.Hour).Add(-time.Second)) || until.After(time.Now().Add(2*time.Hour))):
			t.Errorf("the old %s retires at %s, want in 2 h", key, until)
		}
	}
	for k, v := range before {
		if _, rotated := keyring.PreviousVar[k]; !rotated && after[k] != v {
			t.Errorf("%s changed", k)
		}
	}
	for _, vals := range []map[string]string{before, after} {
		for _, k := range append(keyring.Rotatable(), deployfiles.PreviousKeys...) {
			if v := vals[k]; v != "" && strings.Contains(printed.String(), v) {
				t.Errorf("the value of %s was printed", k)
			}
		}
	}
	// The gateway and the data chain name the new keys as rotate said.
	if _, stderr, err := runLocal(t, false, "rotate", "JWT_SECRET_KEY", "--env-file", file); err != nil || !strings.Contains(stderr, "JWT_PREVIOUS_KEYS") {
		t.Fatalf("second rotation: %v %s", err, stderr)
	}
	second, _ := envfile.Read(file)
	if prev, _ := keyring.Parse(second[keyring.JWTPrevious]); len(prev) != 2 || !keyring.Contains(prev, []byte(after["JWT_SECRET_KEY"])) {
		t.Fatalf("after a second rotation: %d previous JWT keys, want both old ones", len(prev))
	}

	// Prune: nothing is retired yet; a day later the JWT and mesh ones
	// are; the encryption key only on request.
	env, output := localEnv(false)
	if err := runPrune(ctx, &PruneOptions{Env: env, EnvFile: file, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, stderr := output(); !strings.Contains(stderr, "no previous value") {
		t.Errorf("prune with nothing retired: %s", stderr)
	}
	env, output = localEnv(false)
	if err := runPrune(ctx, &PruneOptions{Env: env, EnvFile: file, Now: time.Now().Add(25 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	pruned, _ := envfile.Read(file)
	if pruned[keyring.JWTPrevious] != "" || pruned[keyring.MeshPrevious] != "" || pruned[keyring.EncryptionPrevious] == "" {
		t.Fatalf("after prune: JWT left %v, mesh left %v, encryption kept %v", pruned[keyring.JWTPrevious] != "", pruned[keyring.MeshPrevious] != "", pruned[keyring.EncryptionPrevious] != "")
	}
	_, stderr := output()
	if !strings.Contains(stderr, "dropped 3") {
		t.Errorf("prune said %q", stderr)
	}
	if _, _, err := runLocal(t, false, "prune", "--env-file", file, "--encryption-keys"); err != nil {
		t.Fatal(err)
	}
	if pruned, _ = envfile.Read(file); pruned[keyring.EncryptionPrevious] != "" {
		t.Error("prune --encryption-keys kept the previous encryption key")
	}
	if pruned["JWT_SECRET_KEY"] != second["JWT_SECRET_KEY"] || auth.KeyID([]byte(pruned["JWT_SECRET_KEY"])) == "" {
		t.Error("prune changed the current key")
	}
}

func TestRotateRefuses(t *testing.T) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), ".env")
	if err := envfile.WriteAtomic(file, []byte("JWT_SECRET_KEY=\n")); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"rotate", "LUCID_OPERATOR_TOKEN", "--env-file", file},
		{"rotate", "JWT_SECRET_KEY", "--env-file", file, "--overlap", "0s"},
		{"rotate", "--env-file", file},
	} {
		if _, _, err := runLocal(t, false, args...); cli.ExitCode(ctx, err) != cli.ExitUsage {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if _, _, err := runLocal(t, false, "rotate", "JWT_SECRET_KEY", "--env-file", file); err == nil || !strings.Contains(err.Error(), "not set") {
		t.Errorf("rotate of an empty key: %v", err)
	}
}
