package deployfiles

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshca"
)

// A cluster (lucid.yaml's clusters, docs/cluster.md) is rendered once, like
// one Pi with the differences below, and ForHost then gives each host's
// env files its own values: its Raft node id and address, its peers, and
// whether it bootstraps.
//
//   - The engine's API and Raft ports and Consul's server RPC and LAN
//     gossip ports are published on every address of the host: the other
//     hosts reach them (ClusterPorts). Raft and the API speak mTLS with
//     mesh identities; gossip is encrypted with ConsulGossipKey.
//   - Consul runs as a server keeping its data in a volume, not -dev.
//   - The engine's node id is in its env file, not the compose file, so
//     that ForHost can set it.
//   - Every host's mesh controller adopts one CA, the seed in
//     MeshCASeedDir, mounted read-only into it alone, so that a service on
//     one host trusts the services of another.

// Cluster is what Render needs of lucid.yaml's cluster.
type Cluster struct {
	// Hosts is how many hosts the cluster has.
	Hosts int
	// MeshCASeed are the files of MeshCASeedDir by name
	// (MeshCASeedFileNames), as ReadMeshCASeed returns them; without
	// ca.json Render makes a new CA.
	MeshCASeed map[string][]byte
}

// The mesh CA seed of a cluster: meshca's own files (made by meshca.Open),
// kept in MeshCASeedDir on the operator's machine (mode 0700, the files
// 0600: they hold the CA's keys), mounted read-only into the mesh
// controller alone at MeshCASeedMount, which EnvMeshCASeed names to it.
const (
	MeshCASeedDir   = "configs/mesh/ca"
	MeshCASeedMount = "/etc/lucid/mesh-ca"
	EnvMeshCASeed   = "LUCID_MESH_CA_SEED"
	// MeshCAStateName is the CA's state (both keys); MeshCABundleName the
	// exported bundle, which is never read back.
	MeshCAStateName  = "ca.json"
	MeshCABundleName = "bundle.pem"
)

// MeshCASeedFileNames are the files MeshCASeedDir may hold, in the order
// they are shipped.
var MeshCASeedFileNames = []string{MeshCAStateName, MeshCABundleName}

// ConsulGossipKey holds the key that encrypts Consul's gossip between the
// hosts of a cluster (base64 of 32 random bytes, as `consul keygen` makes):
// in the operator's env file and Consul's alone.
const ConsulGossipKey = "CONSUL_GOSSIP_KEY"

// ClusterSecrets are the secrets of the operator's env file that only a
// cluster has: generated when missing and redacted like Secrets, and
// absent from a render without a cluster.
var ClusterSecrets = []string{ConsulGossipKey}

// ClusterPorts are the ports a cluster host publishes on every address
// for the others, by what listens: container and host port alike.
var ClusterPorts = struct {
	EngineAPI, Raft, ConsulServer, ConsulSerfLAN int
}{EngineAPI: 8084, Raft: 8094, ConsulServer: 8300, ConsulSerfLAN: 8301}

// ConsulDataDir is where a cluster's Consul server keeps its state, in a
// volume of its own.
const ConsulDataDir = "/consul/data"

// HostRole is one cluster host's part, which its env files say: who it
// is, where the others are, and whether it starts a new cluster.
type HostRole struct {
	// Name is the host's target name: its engine's Raft node id and its
	// Consul server's node name.
	Name string
	// Address is where the other hosts reach this one: an IP address.
	Address string
	// Peers are the other hosts' addresses.
	Peers []string
	// Bootstrap makes this host's engine bootstrap a new cluster, and its
	// Consul server elect itself alone (bootstrap_expect 1) so that the
	// others, deployed after it, join a cluster that is already there;
	// only the first deploy of a cluster sets it, on one host. Without it
	// Consul expects every host (bootstrap_expect is their number), which
	// bootstraps only a Consul that has no state yet.
	Bootstrap bool
}

// hostNameRE is what a cluster host's name must be: its engine's Raft node
// id and its Consul node name, a DNS label (projectconfig checks the same).
var hostNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// check says what makes r unusable.
func (r HostRole) check() error {
	if !hostNameRE.MatchString(r.Name) {
		return fmt.Errorf("cluster host %q: a host's name is its Raft node id and Consul node name: 1-63 letters, digits and '-'", r.Name)
	}
	if net.ParseIP(r.Address) == nil {
		return fmt.Errorf("cluster host %s: address %q is not an IP address", r.Name, r.Address)
	}
	for i, p := range r.Peers {
		switch {
		case net.ParseIP(p) == nil:
			return fmt.Errorf("cluster host %s: peer %q is not an IP address", r.Name, p)
		case net.ParseIP(p).Equal(net.ParseIP(r.Address)):
			return fmt.Errorf("cluster host %s: its own address %s is among its peers", r.Name, p)
		case slices.ContainsFunc(r.Peers[:i], func(q string) bool { return net.ParseIP(q).Equal(net.ParseIP(p)) }):
			return fmt.Errorf("cluster host %s: peer %s is listed twice", r.Name, p)
		}
	}
	return nil
}

// ForHost returns the service env files of one cluster host: files as
// rendered with a cluster (ServiceEnvPath → content) with the host's own
// values. The engine's gets its node id, Raft address and whether it
// bootstraps, with Raft over mTLS required; anchoring's the local engine
// first, then each peer's; Consul's its server settings (node name,
// address, peers to join, gossip key, how many servers to expect). Every
// other value, and every other file, is left as it is. An env file it must
// change that is missing is an error; no error holds a value.
func ForHost(files map[string][]byte, r HostRole) (map[string][]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	out := maps.Clone(files)
	read := func(name string) (string, map[string]string, error) {
		p := ServiceEnvPath(name)
		data, ok := files[p]
		if !ok {
			return p, nil, fmt.Errorf("%s is missing: `lucidctl render` writes it", p)
		}
		vals, err := envfile.Parse(data)
		if err != nil {
			return p, nil, &envFileError{path: p, err: err}
		}
		return p, vals, nil
	}
	update := func(p string, set map[string]string) error {
		data, _, err := envfile.Update(p, files[p], set)
		out[p] = data
		return err
	}

	engine, _ := catalog.Lookup("engine")
	p, vals, err := read(engine.Name)
	if err != nil {
		return nil, err
	}
	if vals["LUCID_MESH_URL"] == "" {
		return nil, fmt.Errorf("%s: LUCID_MESH_URL is empty: the engines of a cluster speak Raft over mTLS with mesh identities, which needs the mesh", p)
	}
	if err := update(p, map[string]string{
		"LUCID_NODE_ID":           r.Name,
		"LUCID_RAFT_ADDR":         net.JoinHostPort("0.0.0.0", strconv.Itoa(ClusterPorts.Raft)),
		"LUCID_RAFT_ADVERTISE":    net.JoinHostPort(r.Address, strconv.Itoa(ClusterPorts.Raft)),
		"LUCID_RAFT_BOOTSTRAP":    strconv.FormatBool(r.Bootstrap),
		"LUCID_RAFT_REQUIRE_MTLS": "true",
	}); err != nil {
		return nil, err
	}

	p, vals, err = read("anchoring")
	if err != nil {
		return nil, err
	}
	// The local engine first: the anchoring client moves on to the next
	// when one is down or not the leader. Its scheme is the peers' too
	// (https with the mesh on; the mesh verifies the engine by its
	// identity, not by the name in the URL).
	local, _, _ := strings.Cut(vals["BLOCKCHAIN_ENGINE_URL"], ",")
	if local = strings.TrimSpace(local); local == "" {
		local = URL(engine)
	}
	scheme, _, ok := strings.Cut(local, "://")
	if !ok {
		return nil, fmt.Errorf("%s: BLOCKCHAIN_ENGINE_URL is not a URL", p)
	}
	urls := []string{local}
	for _, peer := range r.Peers {
		urls = append(urls, scheme+"://"+net.JoinHostPort(peer, strconv.Itoa(ClusterPorts.EngineAPI)))
	}
	if err := update(p, map[string]string{"BLOCKCHAIN_ENGINE_URL": strings.Join(urls, ",")}); err != nil {
		return nil, err
	}

	p, vals, err = read(consulEnvName)
	if err != nil {
		return nil, err
	}
	key := vals[ConsulGossipKey]
	if key == "" {
		return nil, fmt.Errorf("%s holds no %s: render with lucid.yaml's cluster", p, ConsulGossipKey)
	}
	expect := len(r.Peers) + 1
	if r.Bootstrap {
		expect = 1
	}
	cfg, err := consulServerConfig(p, vals[ConsulConfigKey], key, map[string]any{
		"node_name":        r.Name,
		"advertise_addr":   r.Address,
		"retry_join":       r.Peers,
		"bootstrap_expect": expect,
	})
	if err != nil {
		return nil, err
	}
	if err := update(p, map[string]string{ConsulConfigKey: cfg}); err != nil {
		return nil, err
	}
	return out, nil
}

// consulServerConfig is the Consul configuration (JSON) base, the content
// of p's ConsulConfigKey, as a cluster's server: base's settings (the
// ACLs) kept, with the gossip key and the settings of host. Errors never
// quote base, which holds the management token.
func consulServerConfig(p, base, gossipKey string, host map[string]any) (string, error) {
	if err := checkGossipKey(gossipKey); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	cfg := map[string]any{}
	dec := json.NewDecoder(strings.NewReader(base))
	dec.UseNumber() // numbers stay as they were written
	if err := dec.Decode(&cfg); err != nil || cfg == nil || dec.More() {
		return "", fmt.Errorf("%s: %s is not a JSON object (the value is not shown): render again", p, ConsulConfigKey)
	}
	cfg["server"] = true
	cfg["encrypt"] = gossipKey
	cfg["data_dir"] = ConsulDataDir
	for k, v := range host {
		cfg[k] = v
	}
	if peers, ok := cfg["retry_join"].([]string); ok && len(peers) == 0 {
		delete(cfg, "retry_join") // a cluster of one joins nobody
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(cfg); err != nil {
		return "", fmt.Errorf("%s: %s: %w", p, ConsulConfigKey, err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

// NewGossipKey is a new Consul gossip key: base64 of 32 random bytes.
func NewGossipKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.StdEncoding.EncodeToString(b)
}

// checkGossipKey refuses a key Consul would refuse: its -encrypt takes the
// base64 of 16, 24 or 32 bytes (AES-128, -192 or -256).
func checkGossipKey(key string) error {
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil || (len(b) != 16 && len(b) != 24 && len(b) != 32) {
		return fmt.Errorf("%s: Consul's gossip key must be the base64 of 32 random bytes, as `consul keygen` makes (the value is not shown)", ConsulGossipKey)
	}
	return nil
}

// ReadMeshCASeed returns the files of the mesh CA seed of the project in
// dir (MeshCASeedDir) by name, nil when it has none.
func ReadMeshCASeed(dir string) (map[string][]byte, error) {
	var out map[string][]byte
	for _, n := range MeshCASeedFileNames {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(MeshCASeedDir), n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string][]byte{}
		}
		out[n] = data
	}
	return out, nil
}

// meshCASeed returns the cluster's mesh CA seed by project path: the files
// given, checked by opening them as meshca does, or a new CA's when there
// is no ca.json; created says which.
func meshCASeed(ctx context.Context, given map[string][]byte) (files map[string][]byte, created bool, err error) {
	tmp, err := os.MkdirTemp("", "lucid-mesh-ca-")
	if err != nil {
		return nil, false, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	for n := range given {
		if !slices.Contains(MeshCASeedFileNames, n) {
			return nil, false, fmt.Errorf("%s: %q is not a file of a mesh CA (%s)", MeshCASeedDir, n, strings.Join(MeshCASeedFileNames, ", "))
		}
	}
	created = given[MeshCAStateName] == nil
	if !created {
		for n, data := range given {
			if err := os.WriteFile(filepath.Join(tmp, n), data, 0o600); err != nil {
				return nil, false, err
			}
		}
	}
	if _, err := meshca.Open(ctx, tmp, meshca.Options{}); err != nil {
		if created {
			return nil, false, fmt.Errorf("a new mesh CA: %w", err)
		}
		// meshca's reasons name the part that is wrong; a JSON syntax
		// error could quote a character of a key, so none is passed on.
		return nil, false, fmt.Errorf("%s/%s is not a mesh CA that opens (the content is not shown): restore it from a backup, or move it away to make a new CA, which every host of the cluster then adopts", MeshCASeedDir, MeshCAStateName)
	}
	files = map[string][]byte{}
	for _, n := range MeshCASeedFileNames {
		data := given[n]
		if created {
			if data, err = os.ReadFile(filepath.Join(tmp, n)); err != nil {
				return nil, false, fmt.Errorf("a new mesh CA: %w", err)
			}
		}
		if data != nil {
			files[MeshCASeedDir+"/"+n] = data
		}
	}
	return files, created, nil
}
