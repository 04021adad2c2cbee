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
		`lucid.yaml:4:5: unknown key "hots" in targets.pi (did you mean "host"?); known keys: cluster_address, dir, host, port, project, user`,
		`lucid.yaml:7:1: unknown key "platfroms" at the top level (did you mean "platforms"?)`, //nolint:misspell // the misspelt key, quoted back
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error\n%s\nlacks\n%s", msg, want)
		}
	}
}

// TestMergeKeys: YAML's merge key ("<<: *pi", or a list of anchors) is
// read as the keys it brings in, which are checked where they land; a
// typo inside an anchored mapping is still named.
func TestMergeKeys(t *testing.T) {
	cfg, err := Parse("lucid.yaml", []byte(`targets:
  pi1: &pi
    host: 10.0.0.11
    user: pi
  pi2:
    <<: *pi
    host: 10.0.0.12
  pi3:
    <<: [*pi]
    host: 10.0.0.13
`))
	if err != nil {
		t.Fatalf("merge keys: %v", err)
	}
	if pi2 := cfg.Targets["pi2"]; pi2.Host != "10.0.0.12" || pi2.User != "pi" {
		t.Errorf("pi2 = %+v, want pi1's user and its own host", pi2)
	}
	if pi3 := cfg.Targets["pi3"]; pi3.User != "pi" {
		t.Errorf("pi3 = %+v, want pi1's user", pi3)
	}
	_, err = Parse("lucid.yaml", []byte("base: &b\n  hots: x\ntargets:\n  pi:\n    <<: *b\n    host: h\n"))
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"hots" in targets.pi`) {
		t.Errorf("a typo merged in: %v", err)
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
		"targets:\n  local:\n    host: a\n":                     `targets.local: "local" names the local stack`,
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

// TestTargetNamedLocal: a target may be called local only when the local
// stack is called something else (local.name): the two would otherwise
// share operator credentials.
func TestTargetNamedLocal(t *testing.T) {
	if _, err := Parse("lucid.yaml", []byte("local:\n  name: laptop\ntargets:\n  local:\n    host: a\n")); err != nil {
		t.Errorf("a target called local beside a local stack called laptop: %v", err)
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

// clusterTargets are five targets for the cluster tests; pi5 is reached at
// another address than its SSH host.
const clusterTargets = `targets:
  pi1: {host: 10.0.0.1}
  pi2: {host: 10.0.0.2}
  pi3: {host: 10.0.0.3}
  pi4: {host: 10.0.0.4}
  pi5: {host: pi5.example.net, cluster_address: 192.168.7.5}
`

// TestClusters: a cluster of 1, 3 or 5 targets loads, resolves like a
// group, and says which cluster a target is in and where its peers reach
// it; a host may be in groups too.
func TestClusters(t *testing.T) {
	for _, hosts := range []string{"[pi1]", "[pi1, pi2, pi3]", "[pi1, pi2, pi3, pi4, pi5]"} {
		yml := clusterTargets + "groups:\n  fleet: [pi1, pi2]\nclusters:\n  lucid: {hosts: " + hosts + "}\n"
		c, err := Parse("lucid.yaml", []byte(yml))
		if err != nil {
			t.Fatalf("%s: %v", hosts, err)
		}
		got, err := c.Resolve("lucid")
		if err != nil || "["+strings.Join(got, ", ")+"]" != hosts {
			t.Errorf("Resolve(lucid) = %v, %v, want %s", got, err, hosts)
		}
	}
	c, err := Parse("lucid.yaml", []byte(clusterTargets+"clusters:\n  lucid:\n    hosts: [pi1, pi2, pi5]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if name, cl, ok := c.ClusterOf("pi5"); !ok || name != "lucid" || len(cl.Hosts) != 3 {
		t.Errorf("ClusterOf(pi5) = %q %v %v", name, cl, ok)
	}
	if _, _, ok := c.ClusterOf("pi4"); ok {
		t.Error("pi4 is in no cluster")
	}
	if a, b := c.Targets["pi5"].ClusterAddr(), c.Targets["pi1"].ClusterAddr(); a != "192.168.7.5" || b != "10.0.0.1" {
		t.Errorf("cluster addresses %q %q, want cluster_address, else host", a, b)
	}
	if err := c.ApplyEnv(func(k string) string { return map[string]string{"LUCID_CLUSTERS_LUCID_HOSTS": "pi5"}[k] }); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Resolve("lucid"); strings.Join(got, ",") != "pi5" {
		t.Errorf("LUCID_CLUSTERS_LUCID_HOSTS did not override: %v", got)
	}
	if err := c.ApplyEnv(func(k string) string { return map[string]string{"LUCID_CLUSTERS_LUCID_HOSTS": "pi1,pi2"}[k] }); err == nil || !strings.Contains(err.Error(), "environment: clusters.lucid has 2 hosts") {
		t.Errorf("two hosts from the environment: %v", err)
	}
}

// TestClusterErrors: every rule of the clusters section, each with a
// message that says what is wrong and why.
func TestClusterErrors(t *testing.T) {
	for _, tc := range []struct{ yml, want string }{
		{"clusters:\n  a: {hosts: [pi1]}\n  b: {hosts: [pi2]}\n", "clusters: a, b: a project has at most one cluster"},
		{"clusters:\n  lucid: {hosts: []}\n", "clusters.lucid lists no hosts"},
		{"clusters:\n  lucid: {hosts: [pi1, pi2]}\n", "clusters.lucid has 2 hosts: the chain needs a majority of its hosts up, and a majority of 2 is 2, so losing either host stops the chain; list 1 or 3"},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, pi3, pi4]}\n", "clusters.lucid has 4 hosts: the chain needs a majority of its hosts up, and a majority of 4 is 3"},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, pi3, pi4, pi5, pi6]}\n", "clusters.lucid has 6 hosts: a cluster has 1, 3"},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, nas]}\n", `clusters.lucid: "nas" is not a target`},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, pi1]}\n", `clusters.lucid lists "pi1" twice`},
		{"clusters:\n  pi1: {hosts: [pi1]}\n", "clusters.pi1: a target has that name too"},
		{"groups:\n  lucid: [pi1]\nclusters:\n  lucid: {hosts: [pi1]}\n", "clusters.lucid: a group has that name too"},
		{"clusters:\n  lucid: {hosts: [pi_6]}\n", `clusters.lucid: the target name "pi_6" cannot name a cluster host`},
		{"clusters:\n  lucid: {hosts: [pi8]}\n", `targets.pi8.cluster_address "10.0.0.8:8300" is not an IP address (Consul advertises only IP addresses; no port`},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, pi7]}\n", `clusters.lucid: pi1 and pi7 have the same cluster address "10.0.0.1"`},
		{"clusters:\n  lucid: {hosts: [pi1, pi2, pi9]}\n", `clusters.lucid: pi9 is reached at its host "pi9.local", which is not an IP address: set targets.pi9.cluster_address`},
	} {
		yml := clusterTargets + "  pi6: {host: 10.0.0.6}\n  pi_6: {host: 10.0.0.66}\n  pi7: {host: pi7.local, cluster_address: 10.0.0.1}\n  pi9: {host: pi9.local}\n"
		if strings.Contains(tc.yml, "pi8") {
			yml += "  pi8: {host: 10.0.0.8, cluster_address: \"10.0.0.8:8300\"}\n"
		}
		yml += tc.yml
		_, err := Parse("lucid.yaml", []byte(yml))
		if err == nil || !strings.Contains(err.Error(), "lucid.yaml: "+tc.want) {
			t.Errorf("%q: %v\nwant an error containing %q", tc.yml, err, tc.want)
		}
	}
	// A host of the cluster in a group as well is fine, and so is one
	// whose SSH host is a name when its cluster address is an IP address.
	yml := clusterTargets + "groups:\n  all: [pi1, pi2, pi3, pi5]\nclusters:\n  lucid: {hosts: [pi1, pi3, pi5]}\n"
	if _, err := Parse("lucid.yaml", []byte(yml)); err != nil {
		t.Errorf("a cluster host in a group: %v", err)
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
		"backup:\n  signers: [ssh-ed25519 AAAA]\n":           "backup.signers[0]",
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

// The tls section: defaults, and every problem with the line of its key.
func TestTLSSection(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"certs/pi.crt", "certs/pi.key", "certs/root.pem"} {
		if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte("pem"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Join(dir, "lucid.yaml")
	c, err := Parse(name, []byte("tls:\n  acme:\n    domains: [pi.example.net]\n    ca_root: certs/root.pem\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := c.TLS.ACME; a.Directory != DefaultACMEDirectory || c.TLS.HTTPSPort != 443 || c.TLS.HTTPPort != 80 {
		t.Errorf("defaults: %+v %+v", c.TLS, a)
	}
	c, err = Parse(name, []byte("tls:\n  cert_file: certs/pi.crt\n  key_file: certs/pi.key\n  https_port: 8443\n  http_port: 8081\n"))
	if err != nil || c.TLS.CertFile != "certs/pi.crt" || c.TLS.HTTPSPort != 8443 {
		t.Fatalf("files: %+v %v", c.TLS, err)
	}
	if c, err := Parse(name, []byte("images:\n  tag: v1\n")); err != nil || c.TLS != nil {
		t.Errorf("no tls section: %+v %v", c.TLS, err)
	}

	for _, tc := range []struct{ src, want string }{
		{"tls:\n  https_port: 443\n", ":1: tls: needs acme"},
		{"tls:\n  acme:\n    domains: [a.example]\n  cert_file: certs/pi.crt\n  key_file: certs/pi.key\n", ":2: tls.acme: acme and cert_file/key_file exclude each other"},
		{"tls:\n  cert_file: certs/pi.crt\n", ":2: tls.cert_file: cert_file needs key_file"},
		{"tls:\n  key_file: certs/pi.key\n", ":2: tls.key_file: key_file needs cert_file"},
		{"tls:\n  cert_file: certs/gone.crt\n  key_file: certs/pi.key\n", ":2: tls.cert_file: " + filepath.Join(dir, "certs/gone.crt") + ": no such file"},
		{"tls:\n  acme:\n    domains: []\n", ":3: tls.acme.domains: lists no DNS name"},
		{"tls:\n  acme:\n    domains: [pi.example.net, \"bad_name.net\"]\n", `:3: tls.acme.domains: "bad_name.net" is not a DNS name ('_' is not`},
		{"tls:\n  acme:\n    domains: [\"*.example.net\"]\n", "is a wildcard"},
		{"tls:\n  acme:\n    domains: [10.0.0.1]\n", "is an IP address"},
		{"tls:\n  acme:\n    domains: [a.example, A.example]\n", `"A.example" is listed twice`},
		{"tls:\n  acme:\n    domains: [a.example]\n    directory: http://acme.example/dir\n", `:4: tls.acme.directory: "http://acme.example/dir" is not an https URL`},
		{"tls:\n  acme:\n    domains: [a.example]\n    email: not-an-address\n", `:4: tls.acme.email: "not-an-address" is not an email address`},
		{"tls:\n  acme:\n    domains: [a.example]\n    ca_root: certs\n", ":4: tls.acme.ca_root: " + filepath.Join(dir, "certs") + " is a directory"},
		{"tls:\n  acme:\n    domains: [a.example]\n  https_port: 70000\n", ":4: tls.https_port: 70000 is not a TCP port"},
		{"tls:\n  acme:\n    domains: [a.example]\n  https_port: 8443\n  http_port: 8443\n", ":5: tls.http_port: 8443 is https_port too"},
		{"tls:\n  acme:\n    domains: [a.example]\n    domain: [b.example]\n", `unknown key "domain" in tls.acme (did you mean "domains"?)`},
	} {
		_, err := Parse(name, []byte(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}
	// Every problem at once.
	_, err = Parse(name, []byte("tls:\n  acme:\n    domains: []\n    directory: ftp://x\n  http_port: 443\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("three problems, one a line: %v", err)
	}
}
