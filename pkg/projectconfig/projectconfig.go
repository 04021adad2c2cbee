// Package projectconfig loads lucid.yaml, the project file that tells
// lucidctl where the Pis are, what the images are called, which platforms to
// build and how the local stack runs.
//
// Loading is strict: an unknown key is an error that names the key, its line
// and the keys that are allowed there, so a typo never silently turns into a
// default.
package projectconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/benchtarget"
	"github.com/pickme/lucid/pkg/isolation"
	"github.com/pickme/lucid/pkg/yamlkeys"
)

// ErrUnknownKey marks an unknown key in the file.
var ErrUnknownKey = yamlkeys.ErrUnknownKey

// DefaultFile is the project file's name.
const DefaultFile = "lucid.yaml"

// Config is the content of lucid.yaml.
type Config struct {
	// Targets are the hosts lucidctl deploys to, by name ("pi").
	Targets map[string]Target `yaml:"targets"`
	// Groups name lists of targets that deploy rolls out host by host.
	Groups map[string][]string `yaml:"groups"`
	// Clusters name groups deployed as one Lucid: one chain under Raft,
	// Consul servers that join each other, one mesh CA (docs/cluster.md).
	// A project has at most one.
	Clusters map[string]Cluster `yaml:"clusters"`
	// Images names the service images.
	Images Images `yaml:"images"`
	// Platforms are the OS/arch pairs to build for.
	Platforms []string `yaml:"platforms"`
	// Local configures the stack `lucidctl up` runs on this machine.
	Local Local `yaml:"local"`
	// Isolation is the TRON-isolation scan's policy; nil means the default.
	Isolation *isolation.Policy `yaml:"isolation"`
	// Bench holds our own performance goals, which `lucidctl bench`
	// checks beside the Phase 2 targets; zero means no goal.
	Bench BenchGoals `yaml:"bench"`
	// Backup configures `lucidctl backup` and `lucidctl restore`.
	Backup Backup `yaml:"backup"`
	// TLS is the gateway's public TLS; nil serves plain HTTP.
	TLS *TLS `yaml:"tls"`

	// Dir is the directory of the file (or the working directory when there
	// is no file); relative paths in the file are relative to it.
	Dir string `yaml:"-"`
	// Path is the file the configuration came from; empty for defaults.
	Path string `yaml:"-"`
}

// composeProject is compose's rule for a project name.
var composeProject = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Target is one host to deploy to.
type Target struct {
	Host string `yaml:"host"`
	User string `yaml:"user"`
	Port int    `yaml:"port"` // 0: ~/.ssh/config, else 22
	Dir  string `yaml:"dir"`
	// Project is the compose project the target's releases run as
	// (default "lucid"): what deploy, status, logs, restart and prune
	// look for on its Docker Engine, and leave alone when it is another's.
	Project string `yaml:"project"`
	// ClusterAddress is where the other hosts of its cluster reach this
	// one; default Host. It must be an IP address (Consul advertises only
	// those), so a target whose Host is a name needs one to be in a
	// cluster.
	ClusterAddress string `yaml:"cluster_address"`
}

// ClusterAddr is the address the other hosts of its cluster reach t at.
func (t Target) ClusterAddr() string {
	if t.ClusterAddress != "" {
		return t.ClusterAddress
	}
	return t.Host
}

// Cluster is a group of hosts deployed as one Lucid.
type Cluster struct {
	// Hosts are the cluster's targets in deploy order: 1, 3 or 5.
	Hosts []string `yaml:"hosts"`
}

// Images names the service images: Name with "{service}" replaced by the
// service name, and Tag.
type Images struct {
	Name string `yaml:"name"`
	Tag  string `yaml:"tag"`
}

// BenchGoals are performance goals for `lucidctl bench`, by the keys of
// benchtarget.Goals, which say what each holds; zero means no goal.
type BenchGoals map[string]float64

// Local configures the local stack.
type Local struct {
	// StateDir holds the supervisor's state file, logs and service data.
	StateDir string `yaml:"state_dir"`
	// EnvFile is the env file services read secrets from.
	EnvFile string `yaml:"env_file"`
	// Consul is "auto" (supervise the consul agent found in
	// LUCID_CONSUL_BIN, on PATH or in the tools cache), "off", "build"
	// (build and cache one first), or the path of a consul binary.
	Consul string `yaml:"consul"`
	// PortOffset is added to every port of the local stack; it also names
	// the stack (`lucidctl status --port-offset N`).
	PortOffset int `yaml:"port_offset"`
	// Name is the local stack's name as a host (default auth.LocalHost):
	// its services' operator credentials are bound to it, and the
	// commands that reach it without --target derive them for it. A
	// target's name when this machine's stack is that target too, reached
	// from elsewhere through SSH.
	Name string `yaml:"name"`
}

// Backup configures the operator's backups.
type Backup struct {
	// Dir is the backup repository `lucidctl backup` writes when --to is
	// not given; relative to the file's directory.
	Dir string `yaml:"dir"`
	// Recipients encrypt every backup: age X25519 keys (age1...) or SSH
	// public keys (ssh-ed25519 ..., ssh-rsa ...). None: backups are
	// refused unless --plaintext.
	Recipients []string `yaml:"recipients"`
	// Identity is the path of the age identity file (or SSH private key)
	// that decrypts backups for restores; never the key itself.
	Identity string `yaml:"identity"`
	// Signers are the public keys ("ed25519:" and base64) whose
	// signatures restore and verify take on a backup: the one lucidctl
	// backup printed, and those of operator tokens rotated since.
	Signers []string `yaml:"signers"`
}

// Defaults, from DESIGN.md.
const (
	DefaultImageName = "pickme/lucid-{service}"
	DefaultImageTag  = "latest-arm64"
	DefaultDeployDir = "/opt/lucid/production"
	DefaultProject   = "lucid"
	DefaultStateDir  = ".lucid"
	DefaultEnvFile   = "configs/environment/.env.core"
)

// Default returns the configuration used when there is no lucid.yaml.
func Default(dir string) *Config {
	c := &Config{Dir: dir}
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	if c.Images.Name == "" {
		c.Images.Name = DefaultImageName
	}
	if c.Images.Tag == "" {
		c.Images.Tag = DefaultImageTag
	}
	if len(c.Platforms) == 0 {
		c.Platforms = []string{"linux/arm64"}
	}
	if c.Local.StateDir == "" {
		c.Local.StateDir = DefaultStateDir
	}
	if c.Local.EnvFile == "" {
		c.Local.EnvFile = DefaultEnvFile
	}
	if c.Local.Consul == "" {
		c.Local.Consul = "auto"
	}
	if c.Local.Name == "" {
		c.Local.Name = auth.LocalHost
	}
	if c.TLS != nil {
		c.TLS.applyDefaults()
	}
	for name, t := range c.Targets {
		if t.Project == "" {
			t.Project = DefaultProject
		}
		if t.Dir == "" {
			t.Dir = DefaultDeployDir
		}
		c.Targets[name] = t
	}
}

// ErrNotFound reports that the file does not exist.
var ErrNotFound = errors.New("project file not found")

// Load reads the file at p. When required is false and the file does not
// exist, it returns the defaults for the file's directory.
func Load(p string, required bool) (*Config, error) {
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		if required {
			return nil, fmt.Errorf("%s: %w", p, ErrNotFound)
		}
		return Default(filepath.Dir(p)), nil
	}
	if err != nil {
		return nil, err
	}
	c, err := Parse(p, data)
	if err != nil {
		return nil, err
	}
	c.Dir = filepath.Dir(p)
	return c, nil
}

// Parse decodes data, the content of the file called name.
func Parse(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Config{Path: name}
	if len(root.Content) > 0 {
		errs := yamlkeys.Check(name, &root, c)
		errs = append(errs, checkBenchGoals(name, &root)...)
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil {
			return nil, fmt.Errorf("%s: %s", name, strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "))
		}
	}
	c.applyDefaults()
	if err := errors.Join(c.validate(name), c.checkTLS(name, filepath.Dir(name), &root)); err != nil {
		return nil, err
	}
	return c, nil
}

// checkBenchGoals reports every key of the bench section that names no
// goal, with its line and the likely intended one: a mistyped goal would
// otherwise be silently unchecked.
func checkBenchGoals(name string, document *yaml.Node) []error {
	top := document
	if top.Kind == yaml.DocumentNode && len(top.Content) > 0 {
		top = top.Content[0]
	}
	if top.Kind != yaml.MappingNode {
		return nil
	}
	known := benchtarget.GoalKeys()
	var errs []error
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "bench" || top.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		bench := top.Content[i+1]
		for j := 0; j+1 < len(bench.Content); j += 2 {
			k := bench.Content[j]
			if slices.Contains(known, k.Value) {
				continue
			}
			hint := ""
			if s := yamlkeys.Closest(k.Value, known); s != "" {
				hint = fmt.Sprintf(" (did you mean %q?)", s)
			}
			errs = append(errs, fmt.Errorf("%s:%d:%d: %w %q in bench%s; known keys: %s",
				name, k.Line, k.Column, ErrUnknownKey, k.Value, hint, strings.Join(known, ", ")))
		}
	}
	return errs
}

var platformRE = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9]+(/v[0-9]+)?$`)

func (c *Config) validate(name string) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	for tn, t := range c.Targets {
		if tn == auth.LocalHost && c.Local.Name == auth.LocalHost {
			// A Pi of that name would accept the operator credentials
			// lucidctl sends the local stack's services, and the other
			// way round.
			bad("targets.%s: %q names the local stack (lucidctl up) to lucidctl, whose services' operator credentials are bound to that name: give the target another (and set local.name to it if this machine's stack is that target)", tn, tn)
		}
		if t.Host == "" {
			bad("targets.%s.host is required", tn)
		}
		if t.Port < 0 || t.Port > 65535 {
			bad("targets.%s.port %d is not a TCP port", tn, t.Port)
		}
		if !path.IsAbs(t.Dir) {
			bad("targets.%s.dir %q must be an absolute path", tn, t.Dir)
		}
		if !composeProject.MatchString(t.Project) {
			bad("targets.%s.project %q is not a compose project name (lowercase letters, digits, - and _, starting with a letter or digit)", tn, t.Project)
		}
	}
	for gn, members := range c.Groups {
		if _, clash := c.Targets[gn]; clash {
			bad("groups.%s: a target has that name too", gn)
		}
		if len(members) == 0 {
			bad("groups.%s lists no targets", gn)
		}
		for _, m := range members {
			if _, ok := c.Targets[m]; !ok {
				bad("groups.%s: %q is not a target", gn, m)
			}
		}
	}
	errs = append(errs, c.validateClusters(name)...)
	for _, p := range c.Platforms {
		if !platformRE.MatchString(p) {
			bad("platforms: %q is not os/arch (for example linux/arm64)", p)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.Bench)) {
		if v := c.Bench[k]; v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			bad("bench.%s %g is not a goal: a positive number, or 0 for none", k, v)
		}
	}
	for i, r := range c.Backup.Recipients {
		if _, err := backup.ParseRecipient(r); err != nil {
			bad("backup.recipients[%d]: %q is not an age recipient (age1...) or an SSH public key (ssh-ed25519 ..., ssh-rsa ...): %v", i, r, err)
		}
	}
	for i, k := range c.Backup.Signers {
		if _, err := backup.ParseSigner(k); err != nil {
			bad("backup.signers[%d]: %q: %v (lucidctl backup prints the key, \"signed by: ed25519:...\")", i, k, err)
		}
	}
	if strings.HasPrefix(strings.TrimSpace(c.Backup.Identity), "AGE-SECRET-KEY-") {
		bad("backup.identity holds a secret key: it must be the path of the identity file, and the key must not be in lucid.yaml")
	}
	if !strings.Contains(c.Images.Name, "{service}") {
		bad("images.name %q must contain {service}", c.Images.Name)
	}
	return errors.Join(errs...)
}

// clusterHostRE is what a cluster host's target name must be: it is its
// engine's Raft node id and its Consul server's node name, which Consul
// wants to be a DNS label.
var clusterHostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// validateClusters checks the clusters section: at most one cluster, of
// 1, 3 or 5 distinct targets, named unlike any target or group, whose
// cluster addresses are distinct IP addresses.
func (c *Config) validateClusters(name string) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	for _, tn := range slices.Sorted(maps.Keys(c.Targets)) {
		if a := c.Targets[tn].ClusterAddress; a != "" && net.ParseIP(a) == nil {
			bad("targets.%s.cluster_address %q is not an IP address (Consul advertises only IP addresses; no port: the cluster's ports are fixed)", tn, a)
		}
	}
	names := slices.Sorted(maps.Keys(c.Clusters))
	if len(names) > 1 {
		bad("clusters: %s: a project has at most one cluster (one chain, one mesh CA)", strings.Join(names, ", "))
	}
	for _, cn := range names {
		cl := c.Clusters[cn]
		if _, clash := c.Targets[cn]; clash {
			bad("clusters.%s: a target has that name too", cn)
		}
		if _, clash := c.Groups[cn]; clash {
			bad("clusters.%s: a group has that name too", cn)
		}
		switch n := len(cl.Hosts); n {
		case 1, 3, 5:
		case 0:
			bad("clusters.%s lists no hosts", cn)
		case 2:
			bad("clusters.%s has 2 hosts: the chain needs a majority of its hosts up, and a majority of 2 is 2, so losing either host stops the chain; list 1 or 3", cn)
		case 4:
			bad("clusters.%s has 4 hosts: the chain needs a majority of its hosts up, and a majority of 4 is 3, so 4 survive the loss of one host as 3 do, with one more to wait for on every block; list 3 or 5", cn)
		default:
			bad("clusters.%s has %d hosts: a cluster has 1, 3 (survives the loss of one) or 5 (of two)", cn, n)
		}
		byAddr := map[string]string{}
		for i, h := range cl.Hosts {
			t, ok := c.Targets[h]
			switch {
			case !ok:
				bad("clusters.%s: %q is not a target", cn, h)
				continue
			case slices.Contains(cl.Hosts[:i], h):
				bad("clusters.%s lists %q twice", cn, h)
				continue
			case !clusterHostRE.MatchString(h):
				bad("clusters.%s: the target name %q cannot name a cluster host: it is the host's Raft node id and Consul node name, 1-63 letters, digits and '-', starting and ending with a letter or digit", cn, h)
			}
			if t.ClusterAddress == "" && net.ParseIP(t.Host) == nil {
				bad("clusters.%s: %s is reached at its host %q, which is not an IP address: set targets.%s.cluster_address to the IP address the other hosts reach it at (Consul advertises only IP addresses)", cn, h, t.Host, h)
				continue
			}
			addr := net.ParseIP(t.ClusterAddr()).String()
			if other, dup := byAddr[addr]; dup {
				bad("clusters.%s: %s and %s have the same cluster address %q (targets' cluster_address, default host): each host needs its own", cn, other, h, t.ClusterAddr())
				continue
			}
			byAddr[addr] = h
		}
	}
	return errs
}

// Target returns the target called name.
func (c *Config) Target(name string) (Target, error) {
	t, ok := c.Targets[name]
	if !ok {
		return Target{}, fmt.Errorf("no target %q in %s", name, c.describe())
	}
	return t, nil
}

// Resolve returns the targets a name stands for: the target itself, or a
// group's members in order.
func (c *Config) Resolve(name string) ([]string, error) {
	if _, ok := c.Targets[name]; ok {
		return []string{name}, nil
	}
	if members, ok := c.Groups[name]; ok {
		return members, nil
	}
	if cl, ok := c.Clusters[name]; ok {
		return cl.Hosts, nil
	}
	return nil, fmt.Errorf("no target or group %q in %s", name, c.describe())
}

// ClusterOf returns the cluster the target called name belongs to, and
// the cluster's name; ok is false when it belongs to none.
func (c *Config) ClusterOf(name string) (cluster string, cl Cluster, ok bool) {
	for _, cn := range slices.Sorted(maps.Keys(c.Clusters)) {
		if slices.Contains(c.Clusters[cn].Hosts, name) {
			return cn, c.Clusters[cn], true
		}
	}
	return "", Cluster{}, false
}

// Abs resolves a path from the file against the file's directory.
func (c *Config) Abs(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.Dir, p)
}

func (c *Config) describe() string {
	if c.Path == "" {
		return "the default configuration (no " + DefaultFile + ")"
	}
	return c.Path
}
