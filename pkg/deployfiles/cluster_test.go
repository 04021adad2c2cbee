package deployfiles

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshca"
)

// placeholderGossipKey is placeholderSecret for Consul's gossip key: the
// base64 of 32 bytes of 'G'.
func placeholderGossipKey() string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("G"), 32))
}

// renderCluster renders a cluster of hosts with the placeholder secrets.
func renderCluster(t *testing.T, hosts int, o Options) *Files {
	t.Helper()
	o.ImageName, o.ImageTag = "pickme/lucid-{service}", "latest-arm64"
	o.NewSecret, o.NewUUID, o.NewGossipKey = placeholderSecret, placeholderUUID, placeholderGossipKey
	if o.Cluster == nil {
		o.Cluster = &Cluster{Hosts: hosts}
	}
	f, err := Render(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// serviceEnvs joins f's service env files as the golden files hold them.
func serviceEnvs(names []string, envs map[string][]byte) []byte {
	var out []byte
	for _, p := range names {
		out = append(append(out, "== "+p+"\n"...), envs[p]...)
	}
	return out
}

// clusterHostAddrs are the addresses of the hosts clusterHostEnvs knows.
var clusterHostAddrs = map[string]string{"pi1": "10.0.0.1", "pi2": "10.0.0.2", "pi3": "10.0.0.3"}

// clusterHostEnvs are the env files a deploy ships to host, one of a
// three-host cluster: its own values (ForHost), and its services'
// operator credentials bound to it.
func clusterHostEnvs(t *testing.T, f *Files, host string) map[string][]byte {
	t.Helper()
	r := HostRole{Name: host, Address: clusterHostAddrs[host]}
	for _, o := range []string{"pi1", "pi2", "pi3"} {
		if o != host {
			r.Peers = append(r.Peers, clusterHostAddrs[o])
		}
	}
	files, err := ForHost(f.ServiceEnvs, r)
	if err != nil {
		t.Fatal(err)
	}
	if files, err = BindOperatorCredentials(files, f.EnvValues["LUCID_OPERATOR_TOKEN"], host); err != nil {
		t.Fatal(err)
	}
	return files
}

// TestClusterHostsHoldTheirOwnOperatorCredentials: each host of a cluster
// gets, for each service, the hash of the operator credential for that
// service on that host, and no other host's: what the operator sends
// pi1's engine (status, maintenance, a backup, the fence) opens nothing on
// pi2's.
func TestClusterHostsHoldTheirOwnOperatorCredentials(t *testing.T) {
	f := renderCluster(t, 3, Options{})
	tok := f.EnvValues["LUCID_OPERATOR_TOKEN"]
	seen := map[string]string{} // hash → service on host
	for _, host := range []string{"pi1", "pi2", "pi3"} {
		files := clusterHostEnvs(t, f, host)
		for _, s := range catalog.Services {
			got := clusterEnvOf(t, files, s.Name)["LUCID_OPERATOR_TOKEN_SHA256"]
			if want := auth.OperatorTokenHash(auth.OperatorCredential(tok, s.Name, host)); got != want {
				t.Errorf("%s's %s does not hold the hash of its credential on %s", host, s.Name, host)
			}
			if other, ok := seen[got]; ok {
				t.Errorf("%s's %s and %s accept the same operator credential", host, s.Name, other)
			}
			seen[got] = s.Name + " on " + host
		}
	}
	pi1, pi2 := clusterHostEnvs(t, f, "pi1"), clusterHostEnvs(t, f, "pi2")
	if clusterEnvOf(t, pi1, "engine")["LUCID_OPERATOR_TOKEN_SHA256"] == clusterEnvOf(t, pi2, "engine")["LUCID_OPERATOR_TOKEN_SHA256"] {
		t.Error("pi1's and pi2's engines accept the same operator credential: one could replay what the operator sends it to the other")
	}
}

// clusterEnvOf parses one env file of files.
func clusterEnvOf(t *testing.T, files map[string][]byte, name string) map[string]string {
	t.Helper()
	vals, err := envfile.Parse(files[ServiceEnvPath(name)])
	if err != nil {
		t.Fatal(err)
	}
	return vals
}

// consulConfigOf decodes consul.env's CONSUL_LOCAL_CONFIG.
func consulConfigOf(t *testing.T, files map[string][]byte) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal([]byte(clusterEnvOf(t, files, consulEnvName)[ConsulConfigKey]), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestRenderClusterGolden: a cluster's compose and env files, as rendered
// and as ForHost and a deploy's binding of the operator credentials make
// them for its second host; the mesh CA seed is a new CA in meshca's own
// files, secret and never shown.
func TestRenderClusterGolden(t *testing.T) {
	f := renderCluster(t, 3, Options{Set: map[string]string{"REDIS_URL": "redis://10.0.0.1:6379/0"}})
	golden(t, "docker-compose.cluster.yml.golden", f.Compose)
	golden(t, "service-envs.cluster.golden", serviceEnvs(f.ServiceEnvNames, f.ServiceEnvs))
	pi2 := clusterHostEnvs(t, f, "pi2")
	golden(t, "service-envs.cluster-pi2.golden", serviceEnvs(f.ServiceEnvNames, pi2))

	if !slices.Contains(f.Generated, ConsulGossipKey) || !f.NewMeshCA || len(f.Warnings) != 1 { // plain HTTP
		t.Errorf("generated %v, new CA %v, warnings %q", f.Generated, f.NewMeshCA, f.Warnings)
	}
	if !strings.Contains(string(f.Env), "\n"+ConsulGossipKey+"="+placeholderGossipKey()+"\n") {
		t.Error("the operator's env file lacks the gossip key")
	}
	// The key is Consul's alone.
	for p, content := range f.ServiceEnvs {
		if has := strings.Contains(string(content), placeholderGossipKey()); has != (p == ServiceEnvPath(consulEnvName)) {
			t.Errorf("%s has the gossip key: %v", p, has)
		}
	}
	// The seed: listed last, secret and opaque, and a CA meshca opens.
	all := f.All()
	var seedFiles []string
	for _, file := range all {
		if strings.HasPrefix(file.Path, MeshCASeedDir+"/") {
			seedFiles = append(seedFiles, file.Path)
			if !file.Secret || !file.Opaque {
				t.Errorf("%s: secret %v, opaque %v", file.Path, file.Secret, file.Opaque)
			}
		}
	}
	if want := []string{MeshCASeedDir + "/ca.json", MeshCASeedDir + "/bundle.pem"}; !slices.Equal(seedFiles, want) || all[len(all)-1].Path != want[1] {
		t.Errorf("seed files %v, want %v last", seedFiles, want)
	}
	dir := t.TempDir()
	for p, data := range f.MeshCASeed {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := meshca.Open(context.Background(), dir, meshca.Options{}); err != nil {
		t.Errorf("the seed does not open as a mesh CA: %v", err)
	}
}

// TestMeshCASeedFileNames: the names the seed is shipped under are the
// ones meshca writes.
func TestMeshCASeedFileNames(t *testing.T) {
	dir := t.TempDir()
	if _, err := meshca.Open(context.Background(), dir, meshca.Options{}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	want := slices.Sorted(slices.Values(MeshCASeedFileNames))
	if !slices.Equal(names, want) {
		t.Errorf("meshca writes %v, deployfiles ships %v", names, want)
	}
}

// TestRenderClusterKeeps: a second render keeps the gossip key and the
// CA seed byte for byte, and generates nothing.
func TestRenderClusterKeeps(t *testing.T) {
	first := renderCluster(t, 3, Options{})
	seed, err := writeAndReadSeed(t, first)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", Existing: first.EnvValues,
		Cluster: &Cluster{Hosts: 3, MeshCASeed: seed}})
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Generated) != 0 || second.NewMeshCA || second.EnvValues[ConsulGossipKey] != placeholderGossipKey() {
		t.Errorf("second render: generated %v, new CA %v", second.Generated, second.NewMeshCA)
	}
	if !maps.EqualFunc(first.MeshCASeed, second.MeshCASeed, bytes.Equal) {
		t.Error("the seed changed on a second render")
	}
	// A fresh render makes a real key and another CA.
	fresh, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", Cluster: &Cluster{Hosts: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if k := fresh.EnvValues[ConsulGossipKey]; checkGossipKey(k) != nil || k == placeholderGossipKey() {
		t.Error("a fresh render's gossip key is not a random one Consul takes")
	}
	if bytes.Equal(fresh.MeshCASeed[MeshCASeedDir+"/ca.json"], first.MeshCASeed[MeshCASeedDir+"/ca.json"]) {
		t.Error("two fresh renders made the same CA")
	}
}

// writeAndReadSeed writes f's seed as render does and reads it back as
// the render command does.
func writeAndReadSeed(t *testing.T, f *Files) (map[string][]byte, error) {
	t.Helper()
	dir := t.TempDir()
	for p, data := range f.MeshCASeed {
		if err := envfile.WriteAtomic(filepath.Join(dir, filepath.FromSlash(p)), data); err != nil {
			t.Fatal(err)
		}
	}
	return ReadMeshCASeed(dir)
}

// TestRenderClusterDifferences: what a cluster changes in the compose
// file, and only that; its files pass Validate.
func TestRenderClusterDifferences(t *testing.T) {
	one := renderCluster(t, 3, Options{Cluster: nil})
	single, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64", NewSecret: placeholderSecret, NewUUID: placeholderUUID})
	if err != nil {
		t.Fatal(err)
	}
	diff := Diff("compose", single.Compose, one.Compose)
	var changed []string
	for _, line := range strings.Split(diff, "\n") {
		if (strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-")) && !strings.HasPrefix(line, "+++") && !strings.HasPrefix(line, "---") {
			changed = append(changed, line)
		}
	}
	want := []string{
		`-    command: ["agent", "-dev", "-client=0.0.0.0"]`,
		`+    command: ["agent", "-server", "-client=0.0.0.0"]`,
		`+      - "8300:8300"`,
		`+      - "8301:8301"`,
		`+      - "8301:8301/udp"`,
		`+    volumes:`,
		`+      - lucid-consul-data:/consul/data`,
		`+      - ../mesh/ca:/etc/lucid/mesh-ca:ro`,
		`-    environment:`,
		`-      - LUCID_NODE_ID=lucid-blockchain-engine`,
		`-    ports:`,
		`-      - "127.0.0.1:8084:8084"`,
		`+    ports:`,
		`+      - "8084:8084"`,
		`+      - "8094:8094"`,
		`+  lucid-consul-data:`,
	}
	if !slices.Equal(changed, want) {
		t.Errorf("a cluster changes the compose file by\n%s\nwant\n%s", strings.Join(changed, "\n"), strings.Join(want, "\n"))
	}
	if v := clusterEnvOf(t, one.ServiceEnvs, "mesh")[EnvMeshCASeed]; v != MeshCASeedMount {
		t.Errorf("the mesh controller's %s = %q", EnvMeshCASeed, v)
	}
	if v := clusterEnvOf(t, one.ServiceEnvs, "engine")["LUCID_NODE_ID"]; v != "lucid-blockchain-engine" {
		t.Errorf("the engine's node id before ForHost = %q", v)
	}
	cfg := consulConfigOf(t, one.ServiceEnvs)
	if cfg["server"] != true || cfg["encrypt"] != placeholderGossipKey() || cfg["data_dir"] != ConsulDataDir || cfg["acl"] == nil {
		t.Errorf("Consul's configuration: %v", cfg)
	}

	// The files as a project holds them pass Validate.
	dir := t.TempDir()
	for _, file := range one.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, filepath.FromSlash(file.Path)), file.Content); err != nil {
			t.Fatal(err)
		}
	}
	problems, err := Validate(context.Background(), ValidateOptions{ComposeFile: filepath.Join(dir, filepath.FromSlash(ComposePath)), ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64"})
	if err != nil || len(problems) != 0 {
		t.Errorf("Validate: %v %v", problems, err)
	}
}

// TestRenderClusterWarnsWithoutRedis: without REDIS_URL the cluster's
// gateways limit from their own budgets, which render says.
func TestRenderClusterWarnsWithoutRedis(t *testing.T) {
	redis := func(f *Files) []string {
		var out []string
		for _, w := range f.Warnings {
			if strings.Contains(w, "REDIS_URL") {
				out = append(out, w)
			}
		}
		return out
	}
	f := renderCluster(t, 5, Options{})
	if w := redis(f); len(w) != 1 || !strings.Contains(w[0], "REDIS_URL is empty") || !strings.Contains(w[0], "each of the 5 gateways limits from its own budget and the cluster allows 5 times a Pi's limits") {
		t.Errorf("warnings %q", f.Warnings)
	}
	if f := renderCluster(t, 3, Options{Existing: map[string]string{"REDIS_URL": "redis://10.0.0.9:6379/0"}}); len(redis(f)) != 0 {
		t.Errorf("with REDIS_URL: %q", f.Warnings)
	}
	single, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil || len(redis(single)) != 0 {
		t.Errorf("one Pi: %q %v", single.Warnings, err)
	}
}

// TestRenderClusterRefuses: what cannot make a cluster is refused, with
// the reason and no secret.
func TestRenderClusterRefuses(t *testing.T) {
	junk := map[string][]byte{"ca.json": []byte(`{"root_key": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIq`)}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{NoConsul: true}, "a cluster runs a Consul server on each host"},
		{Options{PortOffset: 100}, "fixed ports: a port offset does not fit a cluster"},
		{Options{Existing: map[string]string{"LUCID_MESH_URL": ""}}, "LUCID_MESH_URL is empty: the engines of a cluster speak Raft over mTLS"},
		{Options{Existing: map[string]string{ConsulGossipKey: "c2hvcnQ="}}, "CONSUL_GOSSIP_KEY: Consul's gossip key must be the base64 of 32 random bytes"},
		{Options{Cluster: &Cluster{Hosts: 3, MeshCASeed: junk}}, "configs/mesh/ca/ca.json is not a mesh CA that opens (the content is not shown)"},
		{Options{Cluster: &Cluster{Hosts: 3, MeshCASeed: map[string][]byte{"ca.json": nil, "key.pem": []byte("x")}}}, `"key.pem" is not a file of a mesh CA`},
	} {
		tc.o.ImageName, tc.o.ImageTag = "x/{service}", "t"
		if tc.o.Cluster == nil {
			tc.o.Cluster = &Cluster{Hosts: 3}
		}
		_, err := Render(context.Background(), tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
			continue
		}
		for _, leak := range []string{"c2hvcnQ", "PRIVATE KEY", "MHcC"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("the error quotes a secret: %v", err)
			}
		}
	}
}

// TestForHost: each host's own values in the engine's, anchoring's and
// Consul's env files; everything else as rendered; idempotent.
func TestForHost(t *testing.T) {
	f := renderCluster(t, 3, Options{})
	role := HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.2", "10.0.0.3"}, Bootstrap: true}
	got, err := ForHost(f.ServiceEnvs, role)
	if err != nil {
		t.Fatal(err)
	}
	engine := clusterEnvOf(t, got, "engine")
	for k, want := range map[string]string{
		"LUCID_NODE_ID": "pi1", "LUCID_RAFT_ADDR": "0.0.0.0:8094", "LUCID_RAFT_ADVERTISE": "10.0.0.1:8094",
		"LUCID_RAFT_BOOTSTRAP": "true", "LUCID_RAFT_REQUIRE_MTLS": "true",
	} {
		if engine[k] != want {
			t.Errorf("engine.env %s = %q, want %q", k, engine[k], want)
		}
	}
	if u := clusterEnvOf(t, got, "anchoring")["BLOCKCHAIN_ENGINE_URL"]; u != "https://lucid-blockchain-engine:8084,https://10.0.0.2:8084,https://10.0.0.3:8084" {
		t.Errorf("anchoring's engines: %s", u)
	}
	cfg := consulConfigOf(t, got)
	for k, want := range map[string]any{
		"server": true, "bootstrap_expect": 1.0, "advertise_addr": "10.0.0.1", "node_name": "pi1",
		"encrypt": placeholderGossipKey(), "data_dir": ConsulDataDir,
	} {
		if cfg[k] != want {
			t.Errorf("Consul's %s = %v, want %v", k, cfg[k], want)
		}
	}
	if j, _ := json.Marshal(cfg["retry_join"]); string(j) != `["10.0.0.2","10.0.0.3"]` {
		t.Errorf("retry_join %s", j)
	}
	// The ACL settings are as rendered.
	rendered := consulConfigOf(t, f.ServiceEnvs)
	if a, b := must(json.Marshal(cfg["acl"])), must(json.Marshal(rendered["acl"])); !bytes.Equal(a, b) {
		t.Errorf("acl changed: %s, was %s", a, b)
	}
	// Every other file as it was, every other value too.
	for p, content := range f.ServiceEnvs {
		name := strings.TrimSuffix(strings.TrimPrefix(p, "configs/environment/"), ".env")
		if !slices.Contains([]string{"engine", "anchoring", consulEnvName}, name) {
			if !bytes.Equal(content, got[p]) {
				t.Errorf("%s changed", p)
			}
			continue
		}
		was, now := clusterEnvOf(t, f.ServiceEnvs, name), clusterEnvOf(t, got, name)
		for k, v := range was {
			if owned := slices.Contains([]string{"LUCID_NODE_ID", "BLOCKCHAIN_ENGINE_URL", ConsulConfigKey}, k); !owned && now[k] != v {
				t.Errorf("%s: %s changed", p, k)
			}
		}
	}
	again, err := ForHost(got, role)
	if err != nil || !maps.EqualFunc(again, got, bytes.Equal) {
		t.Errorf("ForHost twice differs from once: %v", err)
	}

	// Another host of the same first deploy expects every server, and a
	// cluster of one joins nobody.
	pi3, err := ForHost(f.ServiceEnvs, HostRole{Name: "pi3", Address: "10.0.0.3", Peers: []string{"10.0.0.1", "10.0.0.2"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := consulConfigOf(t, pi3); cfg["bootstrap_expect"] != 3.0 || clusterEnvOf(t, pi3, "engine")["LUCID_RAFT_BOOTSTRAP"] != "false" {
		t.Errorf("pi3: bootstrap_expect %v, engine bootstrap %q", cfg["bootstrap_expect"], clusterEnvOf(t, pi3, "engine")["LUCID_RAFT_BOOTSTRAP"])
	}
	alone, err := ForHost(f.ServiceEnvs, HostRole{Name: "pi", Address: "fd00::1", Bootstrap: true})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := consulConfigOf(t, alone); cfg["retry_join"] != nil || cfg["bootstrap_expect"] != 1.0 {
		t.Errorf("a cluster of one: %v", cfg)
	}
	if a := clusterEnvOf(t, alone, "engine")["LUCID_RAFT_ADVERTISE"]; a != "[fd00::1]:8094" {
		t.Errorf("an IPv6 address advertised as %q", a)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestForHostRefuses: a missing file, files rendered without a cluster,
// and roles that cannot be, each named; no error holds a secret.
func TestForHostRefuses(t *testing.T) {
	f := renderCluster(t, 3, Options{})
	single, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t", NewUUID: placeholderUUID})
	if err != nil {
		t.Fatal(err)
	}
	without := func(name string) map[string][]byte {
		m := maps.Clone(f.ServiceEnvs)
		delete(m, ServiceEnvPath(name))
		return m
	}
	meshOff := maps.Clone(f.ServiceEnvs)
	meshOff[ServiceEnvPath("engine")] = bytes.Replace(meshOff[ServiceEnvPath("engine")], []byte("LUCID_MESH_URL="), []byte("#"), 1)
	brokenConsul := maps.Clone(f.ServiceEnvs)
	brokenConsul[ServiceEnvPath(consulEnvName)] = bytes.Replace(brokenConsul[ServiceEnvPath(consulEnvName)], []byte(`{"acl"`), []byte(`{acl`), 1)
	ok := HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.2", "10.0.0.3"}}
	for _, tc := range []struct {
		files map[string][]byte
		role  HostRole
		want  string
	}{
		{without("engine"), ok, "configs/environment/engine.env is missing: `lucidctl render` writes it"},
		{without("anchoring"), ok, "configs/environment/anchoring.env is missing"},
		{without(consulEnvName), ok, "configs/environment/consul.env is missing"},
		{single.ServiceEnvs, ok, "configs/environment/consul.env holds no CONSUL_GOSSIP_KEY: render with lucid.yaml's cluster"},
		{meshOff, ok, "engine.env: LUCID_MESH_URL is empty"},
		{brokenConsul, ok, "consul.env: CONSUL_LOCAL_CONFIG is not a JSON object (the value is not shown)"},
		{f.ServiceEnvs, HostRole{Name: "pi_1", Address: "10.0.0.1"}, `cluster host "pi_1"`},
		{f.ServiceEnvs, HostRole{Name: "pi1", Address: "pi1.local"}, `address "pi1.local" is not an IP address`},
		{f.ServiceEnvs, HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.2:8301"}}, `peer "10.0.0.2:8301" is not an IP address`},
		{f.ServiceEnvs, HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.1"}}, "its own address 10.0.0.1 is among its peers"},
		{f.ServiceEnvs, HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.2", "10.0.0.2"}}, "peer 10.0.0.2 is listed twice"},
	} {
		_, err := ForHost(tc.files, tc.role)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.role, err, tc.want)
			continue
		}
		for _, leak := range []string{placeholderUUID(), placeholderGossipKey(), strings.Repeat("S", 8)} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("the error quotes a secret: %v", err)
			}
		}
	}
}

// TestGossipKeyIsConsuls: no Lucid service reads Consul's gossip key.
func TestGossipKeyIsConsuls(t *testing.T) {
	for _, s := range catalog.Services {
		if s.Reads(ConsulGossipKey) {
			t.Errorf("%s reads the gossip key; only Consul's container has it", s.Name)
		}
	}
}

// TestDeployedGossipKey: a release's env files tell the gossip key, so a
// deploy and `lucidctl secrets` see it differ and can pull it back into
// the operator's file.
func TestDeployedGossipKey(t *testing.T) {
	f := renderCluster(t, 3, Options{})
	pi1, err := ForHost(f.ServiceEnvs, HostRole{Name: "pi1", Address: "10.0.0.1", Peers: []string{"10.0.0.2", "10.0.0.3"}})
	if err != nil {
		t.Fatal(err)
	}
	host, err := ReadDeployedSecrets(auth.LocalHost, pi1)
	if err != nil || host.Values[ConsulGossipKey] != placeholderGossipKey() {
		t.Fatalf("deployed gossip key %q %v", host.Values[ConsulGossipKey], err)
	}
	other := renderCluster(t, 3, Options{Existing: map[string]string{ConsulGossipKey: NewGossipKey()}})
	next, err := ReadDeployedSecrets(auth.LocalHost, other.ServiceEnvs)
	if err != nil {
		t.Fatal(err)
	}
	if d := host.Differ(next, ""); !slices.Equal(d, []string{ConsulGossipKey}) {
		t.Errorf("differ %v", d)
	}
	if set, _ := host.OperatorValues(other.EnvValues); set[ConsulGossipKey] != placeholderGossipKey() {
		t.Error("the host's gossip key is not among the values to pull")
	}
}
