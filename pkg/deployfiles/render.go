// Package deployfiles makes and checks the files a Pi deployment runs
// from: the compose file of the core services, the operator's env file,
// each service's own env file and, when the project has one, the gateway's
// route table.
//
// Render fills the embedded templates (package templates) from lucid.yaml's
// image names and the catalog, keeping every value an existing env file
// already has and generating missing secrets. The operator's env file
// (EnvPath) holds every secret and stays on the operator's machine; each
// service gets an env file of its own (ServiceEnvPath) with only what it
// reads, its mesh credentials derived for its name (ServiceEnv), so one
// compromised container holds no other's secrets. Validate loads any
// compose and env files with compose-go and reports what would break a
// deployment, with file and line.
package deployfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/google/uuid"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/templates"
)

// Paths of the rendered files, relative to the project directory.
const (
	ComposePath = "configs/docker/docker-compose.core.yml"
	// EnvPath is the operator's env file: every secret, the source every
	// service's env file is derived from. It is never deployed.
	EnvPath = "configs/environment/.env.core"
	// RoutesPath is the gateway's route table (package routetable). It is
	// the operator's own file, not rendered: when a project has one, the
	// compose file mounts it and a deploy ships it; without one the
	// gateway runs DESIGN.md's table.
	RoutesPath = "configs/gateway/routes.yaml"
)

// RoutesMount is where the gateway's container sees RoutesPath.
const RoutesMount = "/etc/lucid/gateway-routes.yaml"

// The gateway's public TLS files: render copies the operator's certificate
// and key (or the ACME CA root) from lucid.yaml's tls section into TLSDir,
// the compose file mounts that directory read-only into the gateway only,
// at TLSMount, and a deploy ships it with each release, readable by the
// gateway's user alone.
const (
	TLSDir   = "configs/gateway/tls"
	TLSMount = "/etc/lucid/tls"
	// The files' names in TLSDir and TLSMount.
	TLSCertName  = "tls.crt"
	TLSKeyName   = "tls.key"
	ACMERootName = "acme-root.pem"
)

// MaxPortOffset is the largest port offset: every port of the stack,
// shifted by it, is still a port (Consul's 8600 the highest).
const MaxPortOffset = 50000

// GatewayHTTPPort is the gateway's plain-HTTP listener in its container
// with TLS on (LUCID_HTTP_ADDR's default): ACME challenges and redirects.
const GatewayHTTPPort = 8079

// TLSFileNames are the files TLSDir may hold, in the order they are shipped.
var TLSFileNames = []string{TLSCertName, TLSKeyName, ACMERootName}

// ReadRoutes returns the route table of the project in dir, nil if it has
// none. It is not checked here.
func ReadRoutes(dir string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(RoutesPath)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// In-image facts the compose file relies on; the image builder makes them
// true.
const (
	// Binary is where the lucid binary is in every image.
	Binary = "/usr/local/bin/lucid"
	// User is the non-root user (and group) the services run as.
	User = "65532:65532"
	// Network is the external Docker network the Pi's services share.
	Network = "lucid-pi-network"
	// DataRoot holds each service's data directory in its image.
	DataRoot = "/var/lib/lucid"
)

// Each container's log, rotated by Docker: at most LogMaxFiles files of
// LogMaxSize, 30 MiB a container, 210 MiB for a Pi's seven, and the
// last few hours of a busy gateway's access log.
const (
	LogMaxSize  = "10m"
	LogMaxFiles = 3
)

// Consul in the compose file: not ours, so not built by lucidctl.
const (
	ConsulContainer = "lucid-consul"
	ConsulImage     = "hashicorp/consul:1.14.11"
	consulPort      = 8500
)

// ServiceEnvPath is the env file of the service (or Consul's container)
// called name, relative to the project directory: what is deployed.
func ServiceEnvPath(name string) string { return "configs/environment/" + name + ".env" }

// IsServiceEnvPath reports whether p is the env file of a Lucid service or
// of Consul's container: the only env files a release holds, and so the
// only paths under a release an env file from elsewhere (a backup) may be
// written to.
func IsServiceEnvPath(p string) bool {
	_, ok := envFileService(p)
	return ok || p == ServiceEnvPath(consulEnvName)
}

// envFileService is the catalog service whose env file p is, if any.
func envFileService(p string) (catalog.Service, bool) {
	svc, ok := catalog.Lookup(strings.TrimSuffix(path.Base(p), ".env"))
	return svc, ok && p == ServiceEnvPath(svc.Name)
}

// Secrets are the env keys of the operator's file generated when missing
// and redacted in output.
var Secrets = []string{"JWT_SECRET_KEY", "ENCRYPTION_KEY", "LUCID_MESH_TOKEN", "LUCID_SERVICE_KEY", "LUCID_OPERATOR_TOKEN", ConsulTokenKey}

// ConsulTokenKey holds Consul's management token in the operator's env
// file and the mesh controller's, and the gateway's own token in its
// file; it must be a UUID.
const ConsulTokenKey = "CONSUL_HTTP_TOKEN"

// ConsulConfigKey is the Consul container's configuration (its image reads
// it): ACLs on, with the management token, so it is a secret too.
const ConsulConfigKey = "CONSUL_LOCAL_CONFIG"

// secretLength is the length of a generated secret.
const secretLength = 48

// Options say what to render.
type Options struct {
	// ImageName has "{service}" replaced by each service name; ImageTag is
	// the tag (lucid.yaml's images).
	ImageName, ImageTag string
	// Existing is the env file's current content, nil if there is none.
	Existing map[string]string
	// Set overrides env values (flags); it beats Existing.
	Set map[string]string
	// NewSecret generates a secret (default envfile.NewSecret) and NewUUID
	// a UUID one (default random); tests fix them.
	NewSecret func(n int) string
	NewUUID   func() string
	// NoConsul leaves the Consul container out (Consul runs elsewhere, or
	// not at all: the gateway then uses the services' static URLs).
	NoConsul bool
	// PortOffset shifts every published host port (container ports stay),
	// to run a second stack beside the first on one host.
	PortOffset int
	// Routes is the content of RoutesPath, nil when the project has none.
	// It is checked, and the gateway's container mounts the file.
	Routes []byte
	// TLS is the gateway's public TLS (lucid.yaml's tls section); nil
	// leaves it serving plain HTTP.
	TLS *TLS
	// Cluster renders the files of a cluster's hosts (see Cluster), which
	// ForHost then gives each host's values; nil renders one Pi's.
	Cluster *Cluster
	// NewGossipKey generates Consul's gossip key (default NewGossipKey);
	// tests fix it.
	NewGossipKey func() string
}

// TLS is the gateway's public TLS as Render needs it: the settings of
// lucid.yaml's tls section and the content of the files it names.
type TLS struct {
	// ACME has the gateway obtain and renew its certificates; nil when
	// Cert and Key are given instead.
	ACME *ACME
	// Cert and Key are the operator's certificate chain and key (PEM).
	Cert, Key []byte
	// HTTPSPort and HTTPPort are the host ports published for the
	// gateway's HTTPS and plain-HTTP listeners (before PortOffset).
	HTTPSPort, HTTPPort int
}

// ACME is where and for which names the gateway obtains certificates.
type ACME struct {
	Domains          []string
	Email, Directory string
	// CARoot verifies the directory's own HTTPS (a private CA); nil for
	// the system roots.
	CARoot []byte
}

// checkPorts refuses an offset that would publish a port outside
// 1..65535, which compose could not load.
func (o *Options) checkPorts() error {
	if o.PortOffset < 0 || o.PortOffset > MaxPortOffset {
		return fmt.Errorf("the port offset %d is outside 0..%d", o.PortOffset, MaxPortOffset)
	}
	if o.TLS != nil {
		for _, p := range []int{o.TLS.HTTPSPort, o.TLS.HTTPPort} {
			if p+o.PortOffset > 65535 {
				return fmt.Errorf("the gateway's port %d with the port offset %d is %d, past 65535", p, o.PortOffset, p+o.PortOffset)
			}
		}
	}
	return nil
}

// Files are the rendered files.
type Files struct {
	Compose []byte
	// Env is the operator's env file (EnvPath).
	Env []byte
	// EnvValues is the operator's env file's content as values.
	EnvValues map[string]string
	// ServiceEnvs are the env files the containers get, by path
	// (ServiceEnvPath), and ServiceEnvNames the paths in compose order.
	ServiceEnvs     map[string][]byte
	ServiceEnvNames []string
	// Unread names keys of the operator's env file that no service reads
	// and that are not the operator's own: likely typos.
	Unread []string
	// Generated lists the secrets made up this time.
	Generated []string
	// TLSFiles are the gateway's TLS files by project path (in TLSDir),
	// none without lucid.yaml's tls section or with ACME and no CA root.
	TLSFiles map[string][]byte
	// Warnings are what the operator should know and need not fix now:
	// the gateway publishing plain HTTP beyond the host's loopback, a
	// cluster's gateways without a shared rate budget.
	Warnings []string
	// MeshCASeed are a cluster's mesh CA seed files by project path (in
	// MeshCASeedDir); nil without a cluster. NewMeshCA says they are a new
	// CA, made this time.
	MeshCASeed map[string][]byte
	NewMeshCA  bool
}

// Image is the image name of service s.
func Image(name, tag string, s catalog.Service) string {
	return strings.ReplaceAll(name, "{service}", s.Name) + ":" + tag
}

// URL is where the other containers reach s.
func URL(s catalog.Service) string {
	return s.Scheme(true) + "://" + s.Container + ":" + strconv.Itoa(s.Port)
}

type composeService struct {
	Container, Image string
	Command          []string
	Hardened         bool
	EnvFile          string // relative to the compose file
	Environment      []string
	Ports            []string
	Volume, DataDir  string
	Mounts           []string // read-only bind mounts, "source:target"
	DependsOn        []string
	Healthcheck      []string
	envName          string // its env file's name (ServiceEnvPath)
}

// Render fills the templates.
func Render(ctx context.Context, o Options) (*Files, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.NewSecret == nil {
		o.NewSecret = envfile.NewSecret
	}
	if o.NewUUID == nil {
		o.NewUUID = uuid.NewString
	}
	if o.Routes != nil {
		if _, err := routetable.Parse(RoutesPath, o.Routes); err != nil {
			return nil, err
		}
	}
	if err := o.checkPorts(); err != nil {
		return nil, err
	}
	if err := o.TLS.check(); err != nil {
		return nil, err
	}
	if o.Cluster != nil {
		switch {
		case o.NoConsul:
			return nil, errors.New("a cluster runs a Consul server on each host, which the others join: leave --no-consul out")
		case o.PortOffset != 0:
			return nil, errors.New("the hosts of a cluster reach each other on fixed ports: a port offset does not fit a cluster")
		}
		if o.NewGossipKey == nil {
			o.NewGossipKey = NewGossipKey
		}
	}
	var err error
	values, urlKeys := defaults()
	// An existing value wins even when empty: an operator who emptied
	// CONSUL_HOST or LUCID_MESH_URL turned that off (secrets excepted).
	maps.Copy(values, o.Existing)
	if o.NoConsul {
		values["CONSUL_HOST"], values["CONSUL_PORT"] = "", ""
	}
	maps.Copy(values, o.Set)
	var generated []string
	for _, k := range Secrets {
		if values[k] == "" {
			if k == ConsulTokenKey {
				values[k] = o.NewUUID()
			} else {
				values[k] = o.NewSecret(secretLength)
			}
			generated = append(generated, k)
		}
	}
	if _, err := uuid.Parse(values[ConsulTokenKey]); err != nil {
		return nil, fmt.Errorf("%s: Consul's management token must be a UUID", ConsulTokenKey)
	}
	var seed map[string][]byte
	var newCA bool
	if o.Cluster != nil {
		if values["LUCID_MESH_URL"] == "" {
			return nil, errors.New("LUCID_MESH_URL is empty: the engines of a cluster speak Raft over mTLS with mesh identities, which needs the mesh")
		}
		if values[ConsulGossipKey] == "" {
			values[ConsulGossipKey] = o.NewGossipKey()
			generated = append(generated, ConsulGossipKey)
		}
		if err := checkGossipKey(values[ConsulGossipKey]); err != nil {
			return nil, err
		}
		if seed, newCA, err = meshCASeed(ctx, o.Cluster.MeshCASeed); err != nil {
			return nil, err
		}
	}

	tmpl, err := template.New("").Funcs(template.FuncMap{
		"join":  quotedList,
		"value": func(k string) (string, error) { return envfile.Value(k, values[k]) },
	}).ParseFS(templates.FS, "*.tmpl")
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	var env bytes.Buffer
	if err := tmpl.ExecuteTemplate(&env, "env.core.tmpl", map[string]any{"URLKeys": urlKeys}); err != nil {
		return nil, fmt.Errorf("env template: %w", err)
	}
	// Keys the template does not know (from the file or --set) stay, at
	// the end.
	known := templateKeys(env.Bytes())
	var extra []string
	for k := range values {
		if !known[k] {
			extra = append(extra, k)
		}
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		env.WriteString("\n# Not from the template: kept from the previous file or --set.\n")
		for _, k := range extra {
			v, err := envfile.Value(k, values[k])
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&env, "%s=%s\n", k, v)
		}
	}

	files := &Files{Env: env.Bytes(), EnvValues: values, Generated: generated, ServiceEnvs: map[string][]byte{}}
	for _, k := range extra {
		consulReads := o.Cluster != nil && slices.Contains(ClusterSecrets, k)
		if !readBySomeone(k) && !operatorOnly[k] && !consulReads {
			files.Unread = append(files.Unread, k)
		}
	}
	services := composeServices(o)
	for _, cs := range services {
		path := ServiceEnvPath(cs.envName)
		var vals map[string]string
		if cs.envName == consulEnvName {
			if vals, err = consulEnv(values, o.Cluster != nil); err != nil {
				return nil, err
			}
		} else {
			s, _ := catalog.Lookup(cs.envName)
			// Bound to this machine's name until a deploy binds them to
			// its target's.
			vals = ServiceEnv(values, s, auth.LocalHost)
			if s.Name == catalog.GatewayService {
				o.TLS.env(vals, o.PortOffset)
				if w := plainHTTPWarning(vals, cs.Ports); w != "" {
					files.Warnings = append(files.Warnings, w)
				}
			}
			if o.Cluster != nil {
				clusterEnv(vals, s)
			}
		}
		b, err := serviceEnvFile(cs.envName, vals)
		if err != nil {
			return nil, err
		}
		files.ServiceEnvs[path] = b
		files.ServiceEnvNames = append(files.ServiceEnvNames, path)
	}

	var compose bytes.Buffer
	data := map[string]any{
		"Services": services,
		"User":     User,
		"Network":  Network,
		// Strings: compose wants the options' values quoted.
		"LogMaxSize":  LogMaxSize,
		"LogMaxFiles": strconv.Itoa(LogMaxFiles),
	}
	if err := tmpl.ExecuteTemplate(&compose, "docker-compose.core.yml.tmpl", data); err != nil {
		return nil, fmt.Errorf("compose template: %w", err)
	}
	files.Compose = compose.Bytes()
	files.TLSFiles = o.TLS.files()
	files.MeshCASeed, files.NewMeshCA = seed, newCA
	if o.Cluster != nil && values["REDIS_URL"] == "" {
		files.Warnings = append(files.Warnings, fmt.Sprintf("the cluster's gateways share no rate budget: REDIS_URL is empty in %s, so each of the %d gateways limits from its own budget and the cluster allows %d times a Pi's limits; set it to one Redis every host reaches (each gateway falls back to its own budget while Redis cannot answer)",
			EnvPath, o.Cluster.Hosts, o.Cluster.Hosts))
	}
	return files, nil
}

// File is one rendered file.
type File struct {
	// Path is relative to the project directory, with slashes.
	Path    string
	Content []byte
	// Secret files are written with mode 0600 and redacted in output.
	Secret bool
	// Opaque files (the TLS files) are never shown, not even redacted:
	// output says only whether they change.
	Opaque bool
}

// All lists the rendered files: the compose file, the operator's env file,
// each container's env file in compose order, then the gateway's TLS
// files and a cluster's mesh CA seed.
func (f *Files) All() []File {
	out := []File{{Path: ComposePath, Content: f.Compose}, {Path: EnvPath, Content: f.Env, Secret: true}}
	for _, p := range f.ServiceEnvNames {
		out = append(out, File{Path: p, Content: f.ServiceEnvs[p], Secret: true})
	}
	for _, n := range TLSFileNames {
		if p := TLSDir + "/" + n; f.TLSFiles[p] != nil {
			out = append(out, File{Path: p, Content: f.TLSFiles[p], Secret: true, Opaque: true})
		}
	}
	for _, n := range MeshCASeedFileNames {
		if p := MeshCASeedDir + "/" + n; f.MeshCASeed[p] != nil {
			out = append(out, File{Path: p, Content: f.MeshCASeed[p], Secret: true, Opaque: true})
		}
	}
	return out
}

// operatorOnly are keys of the operator's env file that no container
// reads as they are: the operator token (services get its hash), and the
// Phase 1 name accepted for compatibility.
var operatorOnly = map[string]bool{"LUCID_OPERATOR_TOKEN": true, "MONGODB_URI": true}

func readBySomeone(key string) bool {
	for _, s := range catalog.Services {
		if s.Reads(key) {
			return true
		}
	}
	return false
}

// ServiceEnv is what service s's env file holds, from the operator's
// values: each variable s reads that has a value, and its credentials
// derived for its name. The mesh controller gets the mesh token and
// Consul's management token; every other service the enrolment token of
// its own name (with the mesh on) or the service key (with it off); the
// gateway a Consul token of its own; each the hash of its own operator
// credential on host (auth.OperatorCredential), never the token: the
// local stack's and the rendered files' host is auth.LocalHost, and a
// deploy binds the files to its target (BindOperatorCredentials).
// LUCID_ADDR and LUCID_DATA_DIR are the container's, set by the compose
// file or the supervisor.
func ServiceEnv(values map[string]string, s catalog.Service, host string) map[string]string {
	mesh := values["LUCID_MESH_URL"] != ""
	consul := values["CONSUL_HOST"] != ""
	out := map[string]string{}
	for _, k := range s.Vars() {
		v := values[k]
		switch k {
		case "LUCID_ADDR", "LUCID_DATA_DIR":
			continue
		case "LUCID_MESH_TOKEN":
			switch {
			case s.Name == catalog.MeshService:
			case !mesh || v == "":
				continue
			default:
				v = meshapi.EnrolmentToken(v, s.Name)
			}
		case "LUCID_SERVICE_KEY":
			if mesh {
				continue
			}
		case "LUCID_OPERATOR_TOKEN_SHA256":
			if tok := values["LUCID_OPERATOR_TOKEN"]; v == "" && tok != "" {
				v = auth.OperatorTokenHash(auth.OperatorCredential(tok, s.Name, host))
			}
		case ConsulTokenKey:
			switch {
			case !consul || v == "":
				continue
			case s.Name != catalog.MeshService:
				_, v = meshapi.ConsulToken(v, s.Name)
			}
		}
		if v != "" {
			out[k] = v
		}
	}
	return out
}

// consulEnvName names Consul's env file (ServiceEnvPath).
const consulEnvName = "consul"

// consulEnv is the Consul container's environment: ACLs on, default deny,
// with the management token, which its own CLI (the healthcheck's
// `consul members`) uses too. A cluster's is a server's, with the gossip
// key (ForHost adds each host's settings); the key is there on its own
// too, where ForHost and a deploy's secrets check find it.
func consulEnv(values map[string]string, cluster bool) (map[string]string, error) {
	cfg, err := meshapi.ConsulAgentConfig(values[ConsulTokenKey])
	if err != nil {
		return nil, err
	}
	out := map[string]string{ConsulConfigKey: string(cfg), ConsulTokenKey: values[ConsulTokenKey]}
	if cluster {
		p := ServiceEnvPath(consulEnvName)
		if out[ConsulConfigKey], err = consulServerConfig(p, string(cfg), values[ConsulGossipKey], nil); err != nil {
			return nil, err
		}
		out[ConsulGossipKey] = values[ConsulGossipKey]
	}
	return out, nil
}

// clusterEnv sets what a cluster changes in service s's env file, vals:
// the engine's node id (the compose file does not set it in a cluster;
// ForHost gives each host its own), the mesh controller's CA seed.
func clusterEnv(vals map[string]string, s catalog.Service) {
	switch s.Name {
	case "engine":
		if vals["LUCID_NODE_ID"] == "" {
			vals["LUCID_NODE_ID"] = s.Container
		}
	case catalog.MeshService:
		// Set here, not from the operator's file: the seed is where the
		// compose file mounts it.
		vals[EnvMeshCASeed] = MeshCASeedMount
	}
}

// serviceEnvFile writes vals as the env file of the container name.
func serviceEnvFile(name string, vals map[string]string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The environment of %s, written by `lucidctl render` from\n", name)
	fmt.Fprintf(&b, "# %s: edit that file and render again. Only what this\n", EnvPath)
	b.WriteString("# service reads is here. Mode 0600; never commit it.\n")
	keys := slices.Sorted(maps.Keys(vals))
	for _, k := range keys {
		v, err := envfile.Value(k, vals[k])
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	return b.Bytes(), nil
}

// defaults are the env values before the existing file and flags, and the
// service URL keys in catalog order.
func defaults() (map[string]string, []string) {
	mesh, _ := catalog.Lookup(catalog.MeshService)
	values := map[string]string{
		"CONSUL_HOST":      ConsulContainer,
		"CONSUL_PORT":      strconv.Itoa(consulPort),
		"LUCID_MESH_URL":   URL(mesh),
		"AUTH_SERVICE_URL": "http://lucid-auth-service:8089",
	}
	var keys []string
	for _, s := range catalog.Services {
		if s.Name == catalog.MeshService {
			continue // LUCID_MESH_URL is with the mesh settings
		}
		for _, k := range append([]string{catalog.URLKey(s.Name)}, s.URLEnv...) {
			values[k] = URL(s)
			keys = append(keys, k)
		}
	}
	return values, keys
}

func composeServices(o Options) []composeService {
	var out []composeService
	if !o.NoConsul {
		cs := composeService{
			Container:   ConsulContainer,
			Image:       ConsulImage,
			EnvFile:     fromCompose(ServiceEnvPath(consulEnvName)),
			envName:     consulEnvName,
			Command:     []string{"agent", "-dev", "-client=0.0.0.0"},
			Ports:       []string{"127.0.0.1:" + strconv.Itoa(consulPort+o.PortOffset) + ":" + strconv.Itoa(consulPort)},
			Healthcheck: []string{"CMD", "consul", "members"},
		}
		if o.Cluster != nil {
			// A server that keeps its state; the other hosts' servers
			// reach its RPC and gossip ports.
			cs.Command = []string{"agent", "-server", "-client=0.0.0.0"}
			cs.Volume, cs.DataDir = ConsulContainer+"-data", ConsulDataDir
			server, serf := strconv.Itoa(ClusterPorts.ConsulServer), strconv.Itoa(ClusterPorts.ConsulSerfLAN)
			cs.Ports = append(cs.Ports, server+":"+server, serf+":"+serf, serf+":"+serf+"/udp")
		}
		out = append(out, cs)
	}
	for _, s := range catalog.Services {
		port := strconv.Itoa(s.Port)
		// Only the gateway faces the network; the others are reachable from
		// the Pi itself, for an operator's checks.
		bind := "127.0.0.1:"
		if s.Public {
			bind = ""
		}
		cs := composeService{
			Container:   s.Container,
			Image:       Image(o.ImageName, o.ImageTag, s),
			Hardened:    true,
			EnvFile:     fromCompose(ServiceEnvPath(s.Name)),
			envName:     s.Name,
			Ports:       []string{bind + strconv.Itoa(s.Port+o.PortOffset) + ":" + port},
			Volume:      s.Container + "-data",
			DataDir:     filepath.ToSlash(filepath.Join(DataRoot, s.Name)),
			Healthcheck: HealthcheckTest(s.Name),
		}
		if s.Name == catalog.GatewayService && o.Routes != nil {
			cs.Mounts = append(cs.Mounts, fromCompose(RoutesPath)+":"+RoutesMount)
			cs.Environment = append(cs.Environment, routetable.EnvVar+"="+RoutesMount)
		}
		if s.Name == catalog.GatewayService && o.TLS != nil {
			// HTTPS on the gateway's own port, and the plain-HTTP listener
			// for ACME's challenges and the redirects.
			cs.Ports = []string{
				strconv.Itoa(o.TLS.HTTPSPort+o.PortOffset) + ":" + port,
				strconv.Itoa(o.TLS.HTTPPort+o.PortOffset) + ":" + strconv.Itoa(GatewayHTTPPort),
			}
			if o.TLS.files() != nil {
				cs.Mounts = append(cs.Mounts, fromCompose(TLSDir)+":"+TLSMount)
			}
		}
		switch {
		case s.Name == "engine" && o.Cluster != nil:
			// The other hosts' engines and anchoring reach its API and
			// Raft, both over mTLS; its node id is in its env file, each
			// host's own (ForHost).
			api, raft := strconv.Itoa(ClusterPorts.EngineAPI), strconv.Itoa(ClusterPorts.Raft)
			cs.Ports = []string{api + ":" + port, raft + ":" + raft}
		case s.Name == "engine":
			// Raft remembers its node id; a container's hostname changes
			// when it is recreated.
			cs.Environment = append(cs.Environment, "LUCID_NODE_ID="+s.Container)
		case s.Name == catalog.MeshService && o.Cluster != nil:
			cs.Mounts = append(cs.Mounts, fromCompose(MeshCASeedDir)+":"+MeshCASeedMount)
		}
		var deps []string
		if s.Name != catalog.MeshService {
			deps = append(deps, catalog.MeshService) // it issues the certificates
		}
		deps = append(append(deps, s.DependsOn...), s.After...)
		if s.UsesConsul && !o.NoConsul {
			cs.DependsOn = append(cs.DependsOn, ConsulContainer)
		}
		for _, d := range deps {
			ds, _ := catalog.Lookup(d)
			if !slices.Contains(cs.DependsOn, ds.Container) {
				cs.DependsOn = append(cs.DependsOn, ds.Container)
			}
		}
		out = append(out, cs)
	}
	return out
}

// EnvFilesOf lists the env files the services of compose (the project in
// dir's compose file) read, as project paths with slashes, as compose-go
// reads them. A path that leaves the project's configs/ is refused, since
// a deploy ships what is listed, and so is the operator's env file, which
// no container may read.
func EnvFilesOf(ctx context.Context, dir string, compose []byte) ([]string, error) {
	project, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  filepath.Join(dir, filepath.FromSlash(path.Dir(ComposePath))),
		ConfigFiles: []types.ConfigFile{{Filename: ComposePath, Content: compose}},
	}, func(lo *loader.Options) {
		lo.SkipInterpolation = true // only the paths matter here
		lo.SkipConsistencyCheck = true
		lo.SkipResolveEnvironment = true
		lo.SetProjectName("lucid", false)
	})
	if err != nil {
		return nil, fmt.Errorf("compose file: %w", err)
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(project.Services)) {
		for _, ef := range project.Services[name].EnvFiles {
			rel, err := filepath.Rel(dir, ef.Path)
			rel = filepath.ToSlash(rel)
			switch {
			case err != nil || !strings.HasPrefix(rel, "configs/"):
				return nil, fmt.Errorf("compose file: service %s: env file %s is outside configs/, which a deploy ships", name, ef.Path)
			case rel == EnvPath:
				return nil, fmt.Errorf("compose file: service %s reads %s, the operator's file with every secret: render again, and each service gets its own", name, EnvPath)
			}
			if !slices.Contains(out, rel) {
				out = append(out, rel)
			}
		}
	}
	return out, nil
}

// fromCompose is a project path (EnvPath, RoutesPath) relative to the
// compose file's directory, as compose resolves it.
func fromCompose(p string) string {
	rel, err := filepath.Rel(filepath.Dir(ComposePath), p)
	if err != nil {
		panic(err) // two constant relative paths
	}
	return filepath.ToSlash(rel)
}

// quotedList renders a flow sequence of double-quoted strings.
func quotedList(items []string) string {
	q := make([]string, len(items))
	for i, it := range items {
		q[i] = strconv.Quote(it)
	}
	return strings.Join(q, ", ")
}

// templateKeys lists the KEY= lines of a rendered env file.
func templateKeys(env []byte) map[string]bool {
	keys := map[string]bool{}
	for _, line := range strings.Split(string(env), "\n") {
		if k, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			keys[strings.TrimSpace(k)] = true
		}
	}
	return keys
}
