// Package deployfiles makes and checks the files a Pi deployment runs
// from: the compose file of the core services, the env file they share
// and, when the project has one, the gateway's route table.
//
// Render fills the embedded templates (package templates) from lucid.yaml's
// image names and the catalog, keeping every value an existing env file
// already has and generating missing secrets. Validate loads any compose
// and env files with compose-go and reports what would break a deployment,
// with file and line.
package deployfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/templates"
)

// Paths of the rendered files, relative to the project directory.
const (
	ComposePath = "configs/docker/docker-compose.core.yml"
	EnvPath     = "configs/environment/.env.core"
	// RoutesPath is the gateway's route table (package routetable). It is
	// the operator's own file, not rendered: when a project has one, the
	// compose file mounts it and a deploy ships it; without one the
	// gateway runs DESIGN.md's table.
	RoutesPath = "configs/gateway/routes.yaml"
)

// RoutesMount is where the gateway's container sees RoutesPath.
const RoutesMount = "/etc/lucid/gateway-routes.yaml"

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

// Consul in the compose file: not ours, so not built by lucidctl.
const (
	ConsulContainer = "lucid-consul"
	ConsulImage     = "hashicorp/consul:1.14.11"
	consulPort      = 8500
)

// Secrets are the env keys generated when missing and redacted in output.
var Secrets = []string{"JWT_SECRET_KEY", "ENCRYPTION_KEY", "LUCID_MESH_TOKEN"}

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
	// NewSecret generates a secret (default envfile.NewSecret); tests fix it.
	NewSecret func(n int) string
	// NoConsul leaves the Consul container out (Consul runs elsewhere, or
	// not at all: the gateway then uses the services' static URLs).
	NoConsul bool
	// PortOffset shifts every published host port (container ports stay),
	// to run a second stack beside the first on one host.
	PortOffset int
	// Routes is the content of RoutesPath, nil when the project has none.
	// It is checked, and the gateway's container mounts the file.
	Routes []byte
}

// Files are the rendered files.
type Files struct {
	Compose []byte
	Env     []byte
	// EnvValues is the env file's content as values.
	EnvValues map[string]string
	// Generated lists the secrets made up this time.
	Generated []string
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
	EnvFile          bool
	Environment      []string
	Ports            []string
	Volume, DataDir  string
	Mounts           []string // read-only bind mounts, "source:target"
	DependsOn        []string
	Healthcheck      []string
}

// Render fills the templates.
func Render(ctx context.Context, o Options) (*Files, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.NewSecret == nil {
		o.NewSecret = envfile.NewSecret
	}
	if o.Routes != nil {
		if _, err := routetable.Parse(RoutesPath, o.Routes); err != nil {
			return nil, err
		}
	}
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
			values[k] = o.NewSecret(secretLength)
			generated = append(generated, k)
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

	var compose bytes.Buffer
	data := map[string]any{
		"Services": composeServices(o),
		"User":     User,
		"Network":  Network,
		"EnvFile":  fromCompose(EnvPath),
	}
	if err := tmpl.ExecuteTemplate(&compose, "docker-compose.core.yml.tmpl", data); err != nil {
		return nil, fmt.Errorf("compose template: %w", err)
	}
	return &Files{Compose: compose.Bytes(), Env: env.Bytes(), EnvValues: values, Generated: generated}, nil
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
		for _, k := range append([]string{"LUCID_" + strings.ToUpper(s.Name) + "_URL"}, s.URLEnv...) {
			values[k] = URL(s)
			keys = append(keys, k)
		}
	}
	return values, keys
}

func composeServices(o Options) []composeService {
	var out []composeService
	if !o.NoConsul {
		out = append(out, composeService{
			Container:   ConsulContainer,
			Image:       ConsulImage,
			Command:     []string{"agent", "-dev", "-client=0.0.0.0"},
			Ports:       []string{"127.0.0.1:" + strconv.Itoa(consulPort+o.PortOffset) + ":" + strconv.Itoa(consulPort)},
			Healthcheck: []string{"CMD", "consul", "members"},
		})
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
			EnvFile:     true,
			Ports:       []string{bind + strconv.Itoa(s.Port+o.PortOffset) + ":" + port},
			Volume:      s.Container + "-data",
			DataDir:     filepath.ToSlash(filepath.Join(DataRoot, s.Name)),
			Healthcheck: HealthcheckTest(s.Name),
		}
		if s.Name == "gateway" && o.Routes != nil {
			cs.Mounts = append(cs.Mounts, fromCompose(RoutesPath)+":"+RoutesMount)
			cs.Environment = append(cs.Environment, routetable.EnvVar+"="+RoutesMount)
		}
		if s.Name == "engine" {
			// Raft remembers its node id; a container's hostname changes
			// when it is recreated.
			cs.Environment = append(cs.Environment, "LUCID_NODE_ID="+s.Container)
		}
		var deps []string
		if s.Name != catalog.MeshService {
			deps = append(deps, catalog.MeshService) // it issues the certificates
		}
		deps = append(deps, s.DependsOn...)
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
