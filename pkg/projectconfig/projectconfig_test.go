package projectconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseExample(t *testing.T) {
	data, err := os.ReadFile("../../lucid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("lucid.yaml", data)
	if err != nil {
		t.Fatalf("the shipped lucid.yaml does not load: %v", err)
	}
	pi, err := c.Target("pi")
	if err != nil {
		t.Fatal(err)
	}
	if pi.Port != 22 || pi.Dir != DefaultDeployDir || pi.Project != "lucid" {
		t.Errorf("pi = %+v", pi)
	}
	if c.Images.Name != "pickme/lucid-{service}" || c.Images.Tag != "latest-arm64" {
		t.Errorf("images = %+v, want DESIGN.md's pickme/lucid-<service>:latest-arm64", c.Images)
	}
}

func TestUnknownKeys(t *testing.T) {
	//nolint:misspell // the misspelt keys are what this test is about
	src := `targets:
  pi:
    host: pi.local
    hots: typo
images:
  tag: v1
platfroms: [linux/arm64]
`
	_, err := Parse("lucid.yaml", []byte(src))
	if err == nil {
		t.Fatal("want an error")
	}
	if !errors.Is(err, ErrUnknownKey) {
		t.Errorf("error is not ErrUnknownKey: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`lucid.yaml:4:5: unknown key "hots" in targets.pi (did you mean "host"?); known keys: dir, host, port, project, user`,
		`lucid.yaml:7:1: unknown key "platfroms" at the top level (did you mean "platforms"?)`, //nolint:misspell // the misspelt key, quoted back
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error\n%s\nlacks\n%s", msg, want)
		}
	}
}

func TestInvalidValues(t *testing.T) {
	tests := map[string]string{
		"targets:\n  pi:\n    port: 22\n":                       "targets.pi.host is required",
		"targets:\n  pi:\n    host: a\n    port: 70000\n":       "not a TCP port",
		"targets:\n  pi:\n    host: a\n    dir: relative/dir\n": "absolute path",
		"targets:\n  pi:\n    host: a\n    project: Lucid\n":    "not a compose project name",
		"platforms: [arm64]\n":                                  "not os/arch",
		"images:\n  name: pickme/lucid\n":                       "must contain {service}",
		"targets:\n  pi:\n    host: a\n    port: twenty-two\n":  "line 4",
		"targets: [a, b\n":                                      "lucid.yaml",
	}
	for src, want := range tests {
		_, err := Parse("lucid.yaml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", src, err, want)
		}
	}
}

func TestLoadMissing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lucid.yaml")
	c, err := Load(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if c.Local.StateDir != DefaultStateDir || c.Abs(c.Local.EnvFile) != filepath.Join(dir, DefaultEnvFile) {
		t.Errorf("defaults = %+v", c.Local)
	}
	if _, err := Load(p, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("Load(required) = %v", err)
	}
}

func TestApplyEnv(t *testing.T) {
	c, err := Parse("lucid.yaml", []byte("targets:\n  pi:\n    host: pi.local\nlocal:\n  consul: auto\n"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LUCID_TARGETS_PI_HOST":  "10.0.0.9",
		"LUCID_TARGETS_PI_PORT":  "2222",
		"LUCID_LOCAL_CONSUL":     "off",
		"LUCID_PLATFORMS":        "linux/arm64, linux/amd64",
		"LUCID_IMAGES_TAG":       "v2",
		"LUCID_TARGETS_NAS_HOST": "ignored: no such target in the file",
	}
	if err := c.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	pi := c.Targets["pi"]
	if pi.Host != "10.0.0.9" || pi.Port != 2222 || c.Local.Consul != "off" || c.Images.Tag != "v2" || len(c.Platforms) != 2 {
		t.Errorf("after env: %+v %+v %v", pi, c.Local, c.Platforms)
	}
	if len(c.Targets) != 1 {
		t.Errorf("targets = %v", c.Targets)
	}
	bad := map[string]string{"LUCID_TARGETS_PI_PORT": "ssh"}
	if err := c.ApplyEnv(func(k string) string { return bad[k] }); err == nil || !strings.Contains(err.Error(), "LUCID_TARGETS_PI_PORT") {
		t.Errorf("bad port from env: %v", err)
	}
}

func TestGroups(t *testing.T) {
	yml := "targets:\n  pi1: {host: 10.0.0.1}\n  pi2: {host: 10.0.0.2}\ngroups:\n  fleet: [pi1, pi2]\n"
	c, err := Parse("lucid.yaml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Resolve("fleet"); err != nil || strings.Join(got, ",") != "pi1,pi2" {
		t.Errorf("Resolve(fleet) = %v, %v", got, err)
	}
	if got, err := c.Resolve("pi2"); err != nil || strings.Join(got, ",") != "pi2" {
		t.Errorf("Resolve(pi2) = %v, %v", got, err)
	}
	if _, err := c.Resolve("nope"); err == nil {
		t.Error("Resolve of an unknown name succeeded")
	}
	if err := c.ApplyEnv(func(k string) string { return map[string]string{"LUCID_GROUPS_FLEET": "pi2"}[k] }); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Resolve("fleet"); strings.Join(got, ",") != "pi2" {
		t.Errorf("LUCID_GROUPS_FLEET did not override: %v", got)
	}
	if _, err := Parse("lucid.yaml", []byte(yml+"  broken: [pi3]\n")); err == nil || !strings.Contains(err.Error(), `"pi3" is not a target`) {
		t.Errorf("unknown member: %v", err)
	}
}

func TestIsolationSection(t *testing.T) {
	c, err := Parse("lucid.yaml", []byte("isolation:\n  core_paths: [chain/]\n  isolated_dirs: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Isolation == nil || len(c.Isolation.CorePaths) != 1 || c.Isolation.IsolatedDirs == nil {
		t.Fatalf("isolation = %+v", c.Isolation)
	}
	if _, err := Parse("lucid.yaml", []byte("isolation:\n  core_path: [chain/]\n")); err == nil || !strings.Contains(err.Error(), "core_paths") {
		t.Errorf("a typo in the isolation section: %v", err)
	}
}

// A mistyped bench goal is an error with its line and the goal meant, not
// a goal silently left unchecked; the known ones load.
func TestBenchGoals(t *testing.T) {
	src := `bench:
  gateway_rps: 5000
  gateway_p59_ms: 5
  query_latency: 5
`
	_, err := Parse("lucid.yaml", []byte(src))
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey, got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`lucid.yaml:3:3: unknown key "gateway_p59_ms" in bench (did you mean "gateway_p95_ms"?); known keys: gateway_rps, gateway_p95_ms, query_p95_ms, mesh_overhead_ms, anchors_per_second`,
		`lucid.yaml:4:3: unknown key "query_latency" in bench; known keys: `,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error\n%s\nlacks\n%s", msg, want)
		}
	}
	if n := strings.Count(msg, "unknown key"); n != 2 {
		t.Errorf("%d unknown keys reported, want the 2 mistyped ones:\n%s", n, msg)
	}

	c, err := Parse("lucid.yaml", []byte("bench:\n  gateway_rps: 5000\n  query_p95_ms: 5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bench["gateway_rps"] != 5000 || c.Bench["query_p95_ms"] != 5 || len(c.Bench) != 2 {
		t.Errorf("bench = %v", c.Bench)
	}
	if _, err := Parse("lucid.yaml", []byte("bench:\n  gateway_rps: -1\n")); err == nil || !strings.Contains(err.Error(), "bench.gateway_rps -1") {
		t.Errorf("a negative goal: %v", err)
	}
}

func TestBackupSection(t *testing.T) {
	src := `backup:
  dir: backups
  recipients:
    - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL9maxx8rf4DNNPH5/qmvHd6xxAnows0xI/3bhR8n/Qc op@laptop
  identity: ~/.config/lucid/backup.key
`
	c, err := Parse("lucid.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backup.Dir != "backups" || len(c.Backup.Recipients) != 2 || c.Backup.Identity == "" {
		t.Fatalf("backup = %+v", c.Backup)
	}
	for src, want := range map[string]string{
		"backup:\n  recipients: [age1nope]\n":                "backup.recipients[0]",
		"backup:\n  identity: AGE-SECRET-KEY-1QQQ\n":         "must be the path of the identity file",
		"backup:\n  recipient: [age1nope]\n":                 `did you mean "recipients"?`,
		"backup:\n  recipients: [ssh-ed25519 AAAAnotakey]\n": "SSH public key",
	} {
		_, err := Parse("lucid.yaml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", src, err, want)
		}
	}
}
