package stack

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/consulready"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/supervise"
)

// consulName is Consul's name in the local stack.
const consulName = "consul"

// Consul dev agent ports, shifted by --port-offset like the services'.
const (
	consulHTTPPort   = 8500
	consulGRPCPort   = 8502
	consulServerPort = 8300
	consulSerfLAN    = 8301
	consulSerfWAN    = 8302
)

// plan is what `up` will run.
type plan struct {
	lucid      string
	consul     string // "" when not supervised
	portOffset int
	mtls       bool // the services speak mTLS with mesh certificates
	services   []catalog.Service
	// values are the operator's settings and secrets (the env file's and
	// the environment's); each service gets its own part of them.
	values map[string]string
	// routes is the project's gateway route table (deployfiles.RoutesPath),
	// "" to run the default one.
	routes string
	// host is the stack's name as a host (local.name), to which its
	// services' operator credentials are bound.
	host string
}

func (p *plan) port(s catalog.Service) int { return s.Port + p.portOffset }

func (p *plan) url(s catalog.Service) string {
	return s.Scheme(p.mtls) + "://127.0.0.1:" + strconv.Itoa(p.port(s))
}

// ports are the TCP ports the stack listens on, by who listens.
func (p *plan) ports() map[int]string {
	m := map[int]string{}
	if p.consul != "" {
		for _, port := range []int{consulHTTPPort, consulGRPCPort, consulServerPort, consulSerfLAN, consulSerfWAN} {
			m[port+p.portOffset] = consulName
		}
	}
	for _, s := range p.services {
		m[p.port(s)] = s.Name
		for _, port := range s.ExtraPorts {
			m[port+p.portOffset] = s.Name
		}
	}
	return m
}

// checkPortsFree refuses a stack whose ports another program holds: a
// service's readiness is asked of its port, and whoever answers there
// would pass for it.
func (p *plan) checkPortsFree() error {
	ports := p.ports()
	var taken []string
	for _, port := range slices.Sorted(maps.Keys(ports)) {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			taken = append(taken, fmt.Sprintf("%d (%s's)", port, ports[port]))
			continue
		}
		_ = ln.Close() // a probe: nothing was served
	}
	if len(taken) > 0 {
		return cli.WithHint(fmt.Errorf("127.0.0.1 port %s already in use, by another program or another stack whose ports overlap; nothing was started", strings.Join(taken, ", ")),
			"`lucidctl status --port-offset N` shows a stack at offset N; choose a --port-offset whose ports are free")
	}
	return nil
}

func (p *plan) names() []string {
	var out []string
	if p.consul != "" {
		out = append(out, consulName)
	}
	for _, s := range p.services {
		out = append(out, s.Name)
	}
	return out
}

// runs reports whether the service called name is among the plan's.
func (p *plan) runs(name string) bool {
	return slices.ContainsFunc(p.services, func(s catalog.Service) bool { return s.Name == name })
}

// absent lists the names that are not among the plan's services.
func (p *plan) absent(names []string) []string {
	return slices.DeleteFunc(slices.Clone(names), p.runs)
}

// discovery is how the stack's gateway finds the services.
func (p *plan) discovery() discoveryMode {
	if p.consul != "" {
		return discoveryConsul
	}
	return discoveryStatic
}

// urls maps each program to the URL shown by status.
func (p *plan) urls() map[string]string {
	m := map[string]string{}
	if p.consul != "" {
		m[consulName] = "http://127.0.0.1:" + strconv.Itoa(consulHTTPPort+p.portOffset)
	}
	for _, s := range p.services {
		m[s.Name] = p.url(s)
	}
	return m
}

// specs turns the plan into supervisor programs. Each service gets the
// environment of lucidctl without the stack's variables, then only what
// it reads of the operator's values and its own credentials, as a
// deployed container gets its own env file (deployfiles.ServiceEnv).
func (p *plan) specs(l layout) ([]supervise.Spec, error) {
	var specs []supervise.Spec
	values := maps.Clone(p.values)
	// Every service learns where the others are; the Phase 2 names too.
	// LUCID_MESH_URL also switches mTLS on, so it is set only then; set
	// empty otherwise, as is CONSUL_HOST without a supervised Consul, so a
	// rendered env file's deployment values (container names) do not leak in.
	for _, s := range catalog.Services {
		if s.Name == catalog.MeshService && !p.mtls {
			values[catalog.URLKey(s.Name)] = ""
			continue
		}
		values[catalog.URLKey(s.Name)] = p.url(s)
		for _, name := range s.URLEnv {
			values[name] = p.url(s)
		}
	}
	values["CONSUL_HOST"], values["CONSUL_PORT"] = "", ""
	if p.consul != "" {
		values["CONSUL_HOST"], values["CONSUL_PORT"] = "127.0.0.1", strconv.Itoa(consulHTTPPort+p.portOffset)
		spec, err := p.consulSpec(l)
		if err != nil {
			return nil, err
		}
		specs = append(specs, spec)
	}
	base := withoutKeys(os.Environ(), lucidKeys())
	for _, s := range p.services {
		data := l.dataDir(s.Name)
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, err
		}
		deps := slices.Clone(s.DependsOn)
		// Those it merely starts after, when they run too: one that
		// fails to start does not hold it back (the gateway answers 503
		// on its routes instead).
		var after []string
		for _, a := range s.After {
			if p.runs(a) {
				after = append(after, a)
			}
		}
		if p.consul != "" && s.UsesConsul {
			deps = append(deps, consulName)
		}
		if p.mtls && s.Name != catalog.MeshService {
			deps = append(deps, catalog.MeshService) // it issues their certificates
		}
		env := slices.Clone(base)
		// lucidctl's operator commands derive the stack's services'
		// credentials for its name (local.name, auth.LocalHost unless
		// this machine's stack is a target too).
		host := p.host
		if host == "" {
			host = auth.LocalHost
		}
		own := deployfiles.ServiceEnv(values, s, host)
		for _, k := range slices.Sorted(maps.Keys(own)) {
			env = append(env, k+"="+own[k])
		}
		env = append(append(env, p.extraPorts(s)...), "LUCID_ADDR=127.0.0.1:"+strconv.Itoa(p.port(s)), "LUCID_DATA_DIR="+data)
		if s.Name == "gateway" && p.routes != "" {
			env = append(env, routetable.EnvVar+"="+p.routes)
		}
		// A service is ready when its /ready says so, which for one that
		// runs without services it routes to (absent, or failed once it
		// runs: ReadyWithout) never happens: serving (/health) is all it
		// can be then.
		probe := "/ready"
		if len(p.absent(s.After)) > 0 {
			probe = "/health"
		}
		// Stopped, a service drains for up to its shutdown timeout: it is
		// killed only after that.
		drain := service.DefaultShutdownTimeout
		if d, err := time.ParseDuration(own[service.EnvShutdownTimeout]); err == nil && d > 0 {
			drain = d
		}
		specs = append(specs, supervise.Spec{
			Name:         s.Name,
			Path:         p.lucid,
			Args:         []string{s.Name},
			Env:          env,
			DependsOn:    deps,
			After:        after,
			Ready:        supervise.HTTPProbe(p.url(s) + probe),
			ReadyWithout: supervise.HTTPProbe(p.url(s) + "/health"),
			StopTimeout:  drain + 5*time.Second,
		})
	}
	return specs, nil
}

// withoutKeys is env without the variables keys names.
func withoutKeys(env, keys []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(keys, k) {
			out = append(out, kv)
		}
	}
	return out
}

// extraPorts sets a service's further listen addresses, shifted like its
// main port.
func (p *plan) extraPorts(s catalog.Service) []string {
	var env []string
	for key, port := range s.ExtraPorts {
		env = append(env, key+"=127.0.0.1:"+strconv.Itoa(port+p.portOffset))
	}
	slices.Sort(env)
	return env
}

// consulSpec runs Consul as a single in-memory dev agent on loopback, with
// ACLs on and nothing allowed without a token: its configuration, which
// holds the management token, is a 0600 file in the state directory,
// never an argument other users could read.
func (p *plan) consulSpec(l layout) (supervise.Spec, error) {
	o := p.portOffset
	http := consulHTTPPort + o
	cfg, err := meshapi.ConsulAgentConfig(p.values[deployfiles.ConsulTokenKey])
	if err != nil {
		return supervise.Spec{}, err
	}
	cfgPath := filepath.Join(l.dir, "consul-acl.json")
	if err := envfile.WriteAtomic(cfgPath, cfg); err != nil {
		return supervise.Spec{}, fmt.Errorf("consul configuration: %w", err)
	}
	return supervise.Spec{
		Name: consulName,
		Path: p.consul,
		Args: []string{
			"agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", "-node=lucid-local", "-config-file=" + cfgPath,
			"-http-port=" + strconv.Itoa(http),
			"-grpc-port=" + strconv.Itoa(consulGRPCPort+o),
			"-grpc-tls-port=-1",
			"-server-port=" + strconv.Itoa(consulServerPort+o),
			"-serf-lan-port=" + strconv.Itoa(consulSerfLAN+o),
			"-serf-wan-port=" + strconv.Itoa(consulSerfWAN+o),
			"-dns-port=-1",
		},
		Env:   withoutKeys(os.Environ(), lucidKeys()),
		Ready: consulProbe("127.0.0.1:"+strconv.Itoa(http), p.values[deployfiles.ConsulTokenKey]),
	}, nil
}

// consulProbe is ready once the agent has elected itself leader (before
// that its catalog refuses writes) and its checks' results reach the
// catalog the gateway reads (consulready).
func consulProbe(addr, token string) supervise.Probe {
	agent := consulready.Agent{Addr: addr, Token: token, Client: &http.Client{Timeout: 2 * time.Second}}
	return agent.Check
}
