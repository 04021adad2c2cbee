package deployfiles

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
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

// placeholderUUID is placeholderSecret for Consul's token.
func placeholderUUID() string { return "55555555-5555-4555-9555-555555555555" }

func TestRenderGolden(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64", NewSecret: placeholderSecret, NewUUID: placeholderUUID})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "docker-compose.core.yml.golden", f.Compose)
	golden(t, "env.core.golden", f.Env)
	var envs []byte
	for _, p := range f.ServiceEnvNames {
		envs = append(append(envs, "== "+p+"\n"...), f.ServiceEnvs[p]...)
	}
	golden(t, "service-envs.golden", envs)
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
		want := secretLength
		if k == ConsulTokenKey {
			want = len(placeholderUUID())
		}
		if len(existing[k]) != want || strings.Trim(existing[k], "S5-") == "" {
			t.Errorf("%s = %d chars, want a random %d", k, len(existing[k]), want)
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
	// compose also reads YAML-style lines, KEY: value.
	in := "REDIS_URL=\"redis://:pw1@h:6379\"\nMONGODB_URI=mongodb://u:se#cr%zz@h\nMULTI='first\nsecond-secret\nthird'\n" +
		"JWT_SECRET_KEY: colon-secret\nexport ENCRYPTION_KEY = spaced-secret\nYAML_MULTI:  \"y-first\ny-second\"\nAFTER=visible\n"
	if vals, err := envfile.Parse([]byte(in)); err != nil || vals["JWT_SECRET_KEY"] != "colon-secret" || vals["ENCRYPTION_KEY"] != "spaced-secret" {
		t.Fatalf("the lines are not read as the test means them: %v %v", vals, err)
	}
	got := string(RedactEnv([]byte(in)))
	for _, leak := range []string{"pw1", "se#cr", "second-secret", "third", "first", "colon-secret", "spaced-secret", "y-first", "y-second"} {
		if strings.Contains(got, leak) {
			t.Errorf("redacted output still has %q:\n%s", leak, got)
		}
	}
	if !strings.Contains(got, "AFTER=visible") {
		t.Errorf("redaction ran past the multi-line value:\n%s", got)
	}
}

// TestEachServiceGetsOnlyItsOwn: a service's env file holds what it reads
// and its own credentials: the gateway no encryption key, nobody but the
// controller the mesh token (the others their own enrolment tokens), nobody
// the operator token (all its hash), the gateway a Consul token of its own;
// the service key only with the mesh off. A key of the operator's file that
// no service reads is named.
func TestEachServiceGetsOnlyItsOwn(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t",
		Existing: map[string]string{"LUCID_RATE_FREEE": "200", "LUCID_RATE_FREE": "300"}})
	if err != nil {
		t.Fatal(err)
	}
	v := f.EnvValues
	env := func(name string) map[string]string {
		t.Helper()
		path := filepath.Join(t.TempDir(), name+".env")
		if err := os.WriteFile(path, f.ServiceEnvs[ServiceEnvPath(name)], 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := envfile.Read(path)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	hashes := map[string]string{} // operator credential hashes, by service
	for _, s := range catalog.Services {
		got := env(s.Name)
		for k := range got {
			if !s.Reads(k) {
				t.Errorf("%s is given %s, which it does not read", s.Name, k)
			}
		}
		if got["LUCID_OPERATOR_TOKEN_SHA256"] != auth.OperatorTokenHash(auth.OperatorCredential(v["LUCID_OPERATOR_TOKEN"], s.Name, auth.LocalHost)) {
			t.Errorf("%s has not the hash of its own operator credential on this machine (until a deploy binds it to its target)", s.Name)
		}
		if seen, ok := hashes[got["LUCID_OPERATOR_TOKEN_SHA256"]]; ok {
			t.Errorf("%s and %s accept the same operator credential: one could replay what the operator sends it to the other", seen, s.Name)
		}
		hashes[got["LUCID_OPERATOR_TOKEN_SHA256"]] = s.Name
		for _, val := range got {
			if val == v["LUCID_OPERATOR_TOKEN"] || (s.Name != "gateway" && val == v["JWT_SECRET_KEY"]) || (s.Name != "datachain" && val == v["ENCRYPTION_KEY"]) {
				t.Errorf("%s is given another's secret", s.Name)
			}
		}
		if _, ok := got["LUCID_SERVICE_KEY"]; ok {
			t.Errorf("%s has the service key while the mesh is on", s.Name)
		}
		want := meshapi.EnrolmentToken(v["LUCID_MESH_TOKEN"], s.Name)
		if s.Name == catalog.MeshService {
			want = v["LUCID_MESH_TOKEN"]
		}
		if got["LUCID_MESH_TOKEN"] != want {
			t.Errorf("%s's mesh token is not its own", s.Name)
		}
	}
	if _, gw := meshapi.ConsulToken(v[ConsulTokenKey], "gateway"); env("gateway")[ConsulTokenKey] != gw || env("mesh")[ConsulTokenKey] != v[ConsulTokenKey] {
		t.Error("Consul tokens: the controller's is not the management token or the gateway's not its own")
	}
	if env("gateway")["LUCID_RATE_FREE"] != "300" {
		t.Error("the gateway did not get its own setting from the operator's file")
	}
	if !slices.Contains(f.Unread, "LUCID_RATE_FREEE") || slices.Contains(f.Unread, "LUCID_RATE_FREE") {
		t.Errorf("unread keys = %v, want the typo only", f.Unread)
	}
	if cfg := env("consul")[ConsulConfigKey]; !strings.Contains(cfg, `"default_policy":"deny"`) || !strings.Contains(cfg, v[ConsulTokenKey]) {
		t.Errorf("Consul's configuration: %s", cfg)
	}

	// With the mesh off, the services know each other by the service key.
	off, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", Set: map[string]string{"LUCID_MESH_URL": ""}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range catalog.Services {
		got := string(off.ServiceEnvs[ServiceEnvPath(s.Name)])
		if has := strings.Contains(got, "LUCID_SERVICE_KEY="+off.EnvValues["LUCID_SERVICE_KEY"]); has == (s.Name == catalog.MeshService) {
			t.Errorf("mesh off: %s has the service key: %v", s.Name, has)
		}
	}
}

// TestEnvFilesOf: the env files a deploy ships are what compose reads, in
// either form, inside configs/, and never the operator's file.
func TestEnvFilesOf(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	got, err := EnvFilesOf(ctx, dir, []byte("services:\n  a:\n    image: x\n    env_file: ../environment/a.env\n  b:\n    image: x\n    env_file:\n      - path: ../environment/b.env\n        required: false\n      - ../environment/a.env\n"))
	if err != nil || strings.Join(got, " ") != "configs/environment/a.env configs/environment/b.env" {
		t.Errorf("EnvFilesOf = %v %v", got, err)
	}
	for compose, want := range map[string]string{
		"services:\n  a:\n    image: x\n    env_file: ../../../etc/passwd\n":      "outside configs/",
		"services:\n  a:\n    image: x\n    env_file: ../environment/.env.core\n": "render again",
	} {
		if _, err := EnvFilesOf(ctx, dir, []byte(compose)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", compose, err, want)
		}
	}
}

// TestRedactConsulConfig: Consul's configuration holds its management
// token (and a cluster's gossip key), so its whole value is hidden, as is
// the gossip key's.
func TestRedactConsulConfig(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", NewUUID: placeholderUUID,
		Cluster: &Cluster{Hosts: 3}, NewGossipKey: placeholderGossipKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{ServiceEnvPath(consulEnvName), EnvPath} {
		content := f.ServiceEnvs[p]
		if p == EnvPath {
			content = f.Env
		}
		got := string(RedactEnv(content))
		for _, leak := range []string{placeholderUUID(), placeholderGossipKey()} {
			if strings.Contains(got, leak) {
				t.Errorf("redacted %s still has %q:\n%s", p, leak, got)
			}
		}
	}
	if got := string(RedactEnv(f.ServiceEnvs[ServiceEnvPath(consulEnvName)])); !strings.Contains(got, ConsulConfigKey+"="+Redacted+"\n") {
		t.Errorf("consul.env redacted:\n%s", got)
	}
}

// TestIsServiceEnvPath: the env files of the catalog's services and of
// Consul's container, and nothing else.
func TestIsServiceEnvPath(t *testing.T) {
	for _, p := range []string{ServiceEnvPath("gateway"), ServiceEnvPath("datachain"), ServiceEnvPath("consul")} {
		if !IsServiceEnvPath(p) {
			t.Errorf("%s is a service's env file", p)
		}
	}
	for _, p := range []string{"../../.ssh/authorized_keys", ServiceEnvPath("../x"), ServiceEnvPath("evil"), EnvPath, "configs/environment/gateway.env/x"} {
		if IsServiceEnvPath(p) {
			t.Errorf("%s is not a service's env file", p)
		}
	}
}

// TestEveryContainerLogIsRotated: each container's log is bounded by the
// compose file itself, whatever the host's Docker daemon is configured
// with, so a flood of logged refusals cannot fill the card.
func TestEveryContainerLogIsRotated(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64", NewSecret: placeholderSecret, NewUUID: placeholderUUID})
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  t.TempDir(),
		ConfigFiles: []types.ConfigFile{{Filename: ComposePath, Content: f.Compose}},
	}, func(lo *loader.Options) {
		lo.SkipInterpolation, lo.SkipConsistencyCheck, lo.SkipResolveEnvironment = true, true, true
		lo.SetProjectName("lucid", false)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(project.Services) != len(catalog.Services)+1 { // and Consul
		t.Errorf("%d services in the compose file", len(project.Services))
	}
	for name, s := range project.Services {
		if l := s.Logging; l == nil || l.Driver != "json-file" || l.Options["max-size"] != LogMaxSize || l.Options["max-file"] != strconv.Itoa(LogMaxFiles) {
			t.Errorf("%s's log is not rotated: %+v", name, l)
		}
	}
}
