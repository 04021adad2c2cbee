package deployfiles

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/envfile"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// placeholderSecret makes golden files stable: every generated secret is
// the same recognisable string.
func placeholderSecret(n int) string { return strings.Repeat("S", n) }

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from the golden file:\n%s", name, Diff(name, want, got))
	}
}

func TestRenderGolden(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64", NewSecret: placeholderSecret})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "docker-compose.core.yml.golden", f.Compose)
	golden(t, "env.core.golden", f.Env)
	if len(f.Generated) != len(Secrets) {
		t.Errorf("generated %v, want every secret", f.Generated)
	}
}

// TestRenderKeepsValues: a second render keeps every secret and value the
// file has, --set beats the file, unknown keys stay, and a fresh render
// makes real random secrets.
func TestRenderKeepsValues(t *testing.T) {
	ctx := context.Background()
	first, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), ".env.core")
	if err := envfile.WriteAtomic(path, first.Env); err != nil {
		t.Fatal(err)
	}
	existing, err := envfile.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Secrets {
		if len(existing[k]) != secretLength || existing[k] == strings.Repeat("S", secretLength) {
			t.Errorf("%s = %d chars, want a random %d", k, len(existing[k]), secretLength)
		}
	}
	existing["OPERATOR_NOTE"] = "kept"
	existing["REDIS_URL"] = "redis://old:6379/0"
	second, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t", Existing: existing,
		Set: map[string]string{"REDIS_URL": "redis://lucid-redis:6379/0"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Generated) != 0 {
		t.Errorf("second render generated %v", second.Generated)
	}
	for _, k := range Secrets {
		if second.EnvValues[k] != existing[k] {
			t.Errorf("%s changed on a second render", k)
		}
	}
	if second.EnvValues["REDIS_URL"] != "redis://lucid-redis:6379/0" {
		t.Errorf("--set did not win: %q", second.EnvValues["REDIS_URL"])
	}
	if !strings.Contains(string(second.Env), "\nOPERATOR_NOTE=kept\n") {
		t.Error("a key the template does not know was dropped")
	}
}

func TestRedactEnv(t *testing.T) {
	in := "# comment with JWT_SECRET_KEY=x\nJWT_SECRET_KEY=abc\nMY_API_TOKEN=t0k\nREDIS_URL=redis://user:hunter2@r:6379/0\nCONSUL_HOST=lucid-consul\nEMPTY_KEY=\n"
	got := string(RedactEnv([]byte(in)))
	for _, leak := range []string{"=abc", "t0k", "hunter2"} {
		if strings.Contains(got, leak) {
			t.Errorf("redacted output still has %q:\n%s", leak, got)
		}
	}
	for _, keep := range []string{"# comment with JWT_SECRET_KEY=x", "CONSUL_HOST=lucid-consul", "EMPTY_KEY=\n", "redis://user:xxxxx@r:6379/0"} {
		if !strings.Contains(got, keep) {
			t.Errorf("redacted output lost %q:\n%s", keep, got)
		}
	}
}

// TestRenderRoundTripsAwkwardValues: values with $, # and spaces survive a
// render and a read back (compose's own parser), an emptied setting stays
// empty, a --set key the template lacks is kept, and values that cannot be
// written safely (a quote; ${, which docker-compose v1 expands even in
// single quotes; a trailing backslash) are refused by name.
func TestRenderRoundTripsAwkwardValues(t *testing.T) {
	existing := map[string]string{
		"JWT_SECRET_KEY":   "abc$def$HOMEghi#jkl mno0123456789012345678901",
		"REDIS_URL":        "redis://:pa ss #x@h:6379/0",
		"CONSUL_HOST":      "",
		"ENCRYPTION_KEY":   strings.Repeat("e", 48),
		"LUCID_MESH_TOKEN": strings.Repeat("m", 48),
	}
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", Existing: existing, Set: map[string]string{"LUCID_LOG_LEVEL": "debug"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(path, f.Env, 0o600); err != nil {
		t.Fatal(err)
	}
	back, err := envfile.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range existing {
		if back[k] != v {
			t.Errorf("%s: wrote %q, read back %q", k, v, back[k])
		}
	}
	if back["LUCID_LOG_LEVEL"] != "debug" {
		t.Errorf("--set of a new key lost: %q", back["LUCID_LOG_LEVEL"])
	}
	for _, bad := range []string{"it's", "a${HOME}b", `secret\`} {
		_, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", Set: map[string]string{"JWT_SECRET_KEY": bad}})
		if err == nil || !strings.Contains(err.Error(), "JWT_SECRET_KEY") || strings.Contains(err.Error(), bad) {
			t.Errorf("value %q: %v, want a refusal that names the key and does not show the value", bad, err)
		}
	}
}

func TestRedactEnvAwkward(t *testing.T) {
	in := "REDIS_URL=\"redis://:pw1@h:6379\"\nMONGODB_URI=mongodb://u:se#cr%zz@h\nMULTI='first\nsecond-secret\nthird'\nAFTER=visible\n"
	got := string(RedactEnv([]byte(in)))
	for _, leak := range []string{"pw1", "se#cr", "second-secret", "third", "first"} {
		if strings.Contains(got, leak) {
			t.Errorf("redacted output still has %q:\n%s", leak, got)
		}
	}
	if !strings.Contains(got, "AFTER=visible") {
		t.Errorf("redaction ran past the multi-line value:\n%s", got)
	}
}
