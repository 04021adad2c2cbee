package deployfiles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/routetable"
)

// Problem rules.
const (
	RuleSyntax        = "syntax"
	RuleVariable      = "missing-variable"
	RuleSecret        = "missing-secret"
	RuleExcessSecret  = "excess-secret"
	RuleEnvFile       = "missing-env-file"
	RulePortCollision = "port-collision"
	RuleUndefinedDep  = "undefined-dependency"
	RuleUnhealthyDep  = "dependency-without-healthcheck"
	RuleImage         = "image-name"
	RuleHealthcheck   = "healthcheck-tool"
	RuleMount         = "missing-mount-source"
	RuleRoutes        = "route-table"
	// RulePlainHTTP is a warning, not a problem: the gateway publishing
	// plain HTTP beyond the host's loopback.
	RulePlainHTTP = "plain-http"
)

// Problem is one thing that would break a deployment.
type Problem struct {
	File    string `json:"file"`
	Line    int    `json:"line,omitempty"`
	Service string `json:"service,omitempty"`
	Rule    string `json:"rule"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc += ":" + strconv.Itoa(p.Line)
	}
	if p.Service != "" {
		return fmt.Sprintf("%s: %s: %s (%s)", loc, p.Service, p.Message, p.Rule)
	}
	return fmt.Sprintf("%s: %s (%s)", loc, p.Message, p.Rule)
}

// ValidateOptions say what to check against.
type ValidateOptions struct {
	// ComposeFile is the compose file.
	ComposeFile string
	// EnvFiles give the variables the compose file interpolates (compose's
	// --env-file); later files win.
	EnvFiles []string
	// ImageName and ImageTag are the configured image names (lucid.yaml).
	ImageName, ImageTag string
}

// Validate loads the compose file with compose-go and reports every
// problem it finds; the error is for failing to check at all.
func Validate(ctx context.Context, o ValidateOptions) ([]Problem, error) {
	problems, _, err := ValidateAll(ctx, o)
	return problems, err
}

// ValidateAll is Validate, with the warnings too: what would not break a
// deployment but should be known (RulePlainHTTP).
func ValidateAll(ctx context.Context, o ValidateOptions) (problems, warnings []Problem, err error) {
	v, err := runValidation(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	return v.problems, v.warnings, nil
}

func runValidation(ctx context.Context, o ValidateOptions) (*validation, error) {
	data, err := os.ReadFile(o.ComposeFile)
	if err != nil {
		return nil, err
	}
	if o.EnvFiles == nil {
		// As compose does: a .env beside the compose file, if there is one.
		if dotenv := filepath.Join(filepath.Dir(o.ComposeFile), ".env"); fileExists(dotenv) {
			o.EnvFiles = []string{dotenv}
		}
	}
	v := &validation{file: o.ComposeFile, opts: o, vars: map[string]string{}}
	for _, f := range o.EnvFiles {
		vals, err := envfile.Read(f)
		if err != nil {
			return nil, err
		}
		for k, val := range vals {
			v.vars[k] = val
		}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		v.add(lineOfYAMLError(err), "", RuleSyntax, "%v", err)
		return v, nil
	}
	v.root = &root
	v.checkVariables(data)

	// Variables already reported get a stand-in, so that a ${VAR:?} does not
	// stop compose-go from loading the rest.
	loadEnv := maps.Clone(v.vars)
	for _, name := range v.reported {
		loadEnv[name] = "unset-" + name
	}
	project, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  filepath.Dir(o.ComposeFile),
		ConfigFiles: []types.ConfigFile{{Filename: o.ComposeFile, Content: data}},
		Environment: loadEnv,
	}, func(lo *loader.Options) {
		lo.SkipConsistencyCheck = true   // undefined dependencies are ours to report, with lines
		lo.SkipResolveEnvironment = true // env files are checked below, by name
		lo.SetProjectName("lucid", false)
	})
	if err != nil {
		v.add(0, "", RuleSyntax, "compose-go cannot load it: %v", err)
		return v, nil
	}
	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		v.checkService(project, name, project.Services[name])
	}
	v.checkPorts(project, names)
	sort.SliceStable(v.problems, func(i, j int) bool { return v.problems[i].Line < v.problems[j].Line })
	return v, nil
}

type validation struct {
	file     string
	opts     ValidateOptions
	vars     map[string]string
	root     *yaml.Node
	problems []Problem
	warnings []Problem
	reported []string // variables reported missing or empty
}

func (v *validation) add(line int, service, rule, format string, args ...any) {
	v.problems = append(v.problems, Problem{File: v.file, Line: line, Service: service, Rule: rule, Message: fmt.Sprintf(format, args...)})
}

// line finds the line of a key path in the compose file (0 if absent):
// strings are mapping keys, ints are sequence indexes.
func (v *validation) line(path ...any) int {
	n := v.root
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, p := range path {
		if n == nil {
			return line
		}
		switch key := p.(type) {
		case string:
			var next *yaml.Node
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == key {
						line, next = n.Content[i].Line, n.Content[i+1]
						break
					}
				}
			}
			n = next
		case int:
			if n.Kind != yaml.SequenceNode || key >= len(n.Content) {
				return line
			}
			n = n.Content[key]
			line = n.Line
		}
	}
	return line
}

// varRef matches $NAME and ${NAME...}; $$ is an escaped dollar.
var varRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)([:]?[-?+]?)[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// checkVariables reports interpolations whose variable the env files do
// not set (or set empty), unless the reference has a default.
func (v *validation) checkVariables(data []byte) {
	for i, line := range strings.Split(string(data), "\n") {
		line = stripComment(line)
		for _, m := range varRef.FindAllStringSubmatch(line, -1) {
			if m[0] == "$$" {
				continue
			}
			name, op := m[1], m[2]
			if name == "" {
				name = m[3]
			}
			if op == "-" || op == ":-" || op == "+" || op == ":+" {
				continue // has a default
			}
			val, ok := v.vars[name]
			switch {
			case !ok:
				v.add(i+1, "", RuleVariable, "${%s} is not set in %s", name, v.envDescription())
			case val == "" && (op == "" || op == ":?"):
				v.add(i+1, "", RuleVariable, "${%s} is empty in %s", name, v.envDescription())
			default:
				continue
			}
			v.reported = append(v.reported, name)
		}
	}
}

func (v *validation) envDescription() string {
	if len(v.opts.EnvFiles) == 0 {
		return "the environment (no env file given)"
	}
	return strings.Join(v.opts.EnvFiles, ", ")
}

// lucidService is the catalog service a compose service runs, by its
// container name or service key.
func lucidService(key string, svc types.ServiceConfig) (catalog.Service, bool) {
	for _, s := range catalog.Services {
		if s.Container == svc.ContainerName || s.Container == key {
			return s, true
		}
	}
	return catalog.Service{}, false
}

func (v *validation) checkService(project *types.Project, key string, svc types.ServiceConfig) {
	deps := make([]string, 0, len(svc.DependsOn))
	for d := range svc.DependsOn {
		deps = append(deps, d)
	}
	sort.Strings(deps)
	for _, d := range deps {
		dep, ok := project.Services[d]
		if !ok {
			v.add(v.line("services", key, "depends_on", d), key, RuleUndefinedDep, "depends on %s, which this file does not define", d)
			continue
		}
		_, depIsOurs := lucidService(d, dep) // our images carry a HEALTHCHECK
		if svc.DependsOn[d].Condition == types.ServiceConditionHealthy && dep.HealthCheck == nil && !depIsOurs {
			v.add(v.line("services", key, "depends_on", d), key, RuleUnhealthyDep, "waits for %s to be healthy, but %s has no healthcheck", d, d)
		}
	}
	s, ours := lucidService(key, svc)
	if !ours {
		return
	}
	if v.opts.ImageName != "" {
		if want := Image(v.opts.ImageName, v.opts.ImageTag, s); svc.Image != want {
			v.add(v.line("services", key, "image"), key, RuleImage, "image %s, but lucid.yaml names it %s", svc.Image, want)
		}
	}
	v.checkHealthcheck(key, s, svc)
	vals := v.checkEnvFiles(key, s, svc)
	v.checkMounts(key, svc)
	if s.Public {
		v.checkPlainHTTP(key, s, svc, vals)
	}
}

// checkPlainHTTP warns when the gateway, without TLS, publishes its port
// beyond the host's loopback: bearer tokens would cross the network in
// clear.
func (v *validation) checkPlainHTTP(key string, s catalog.Service, svc types.ServiceConfig, env map[string]string) {
	if ServesTLS(env) {
		return
	}
	for i, p := range svc.Ports {
		if p.Published == "" || int(p.Target) != s.Port || loopback(p.HostIP) {
			continue
		}
		v.warnings = append(v.warnings, Problem{File: v.file, Line: v.line("services", key, "ports", i), Service: key, Rule: RulePlainHTTP,
			Message: PlainHTTPMessage(p.HostIP, p.Published)})
	}
}

// checkMounts: a bind mount's source exists (else Docker makes an empty
// directory in its place), and a route table mounted into the gateway
// parses, as the gateway will refuse to start otherwise.
func (v *validation) checkMounts(key string, svc types.ServiceConfig) {
	for i, m := range svc.Volumes {
		if m.Type != types.VolumeTypeBind {
			continue
		}
		src := m.Source
		if !filepath.IsAbs(src) {
			src = filepath.Join(filepath.Dir(v.file), src)
		}
		line := v.line("services", key, "volumes", i)
		if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
			v.add(line, key, RuleMount, "mounts %s, which does not exist", src)
			continue
		}
		if m.Target != RoutesMount {
			continue
		}
		if _, err := routetable.Load(src); err != nil {
			for _, e := range strings.Split(err.Error(), "\n") {
				v.add(line, key, RuleRoutes, "%s", e)
			}
		}
	}
}

// HealthcheckTest is the compose healthcheck of a Lucid service: the lucid
// binary asks the service's /ready, so depends_on waits for dependencies
// that are reachable, not merely alive.
func HealthcheckTest(service string) []string {
	return []string{"CMD", Binary, service, "healthcheck", "--ready"}
}

// checkHealthcheck: Lucid images are distroless (no shell, no curl, no
// python); the only tool in them is the lucid binary.
func (v *validation) checkHealthcheck(key string, s catalog.Service, svc types.ServiceConfig) {
	hc := svc.HealthCheck
	line := v.line("services", key, "healthcheck", "test")
	want := `["` + strings.Join(HealthcheckTest(s.Name), `", "`) + `"]`
	switch {
	case hc == nil || len(hc.Test) == 0:
		// The image's own HEALTHCHECK applies.
	case hc.Test[0] == "CMD-SHELL" || (hc.Test[0] != "CMD" && hc.Test[0] != "NONE"):
		v.add(line, key, RuleHealthcheck, "the healthcheck needs a shell, which the distroless image lacks; use %s", want)
	case hc.Test[0] == "CMD" && len(hc.Test) > 1 && filepath.Base(hc.Test[1]) != "lucid":
		v.add(line, key, RuleHealthcheck, "the healthcheck runs %s, which the distroless image lacks; use %s", hc.Test[1], want)
	}
}

// checkEnvFiles: the service's env files exist and hold its secrets. It
// returns what the container's environment is.
func (v *validation) checkEnvFiles(key string, s catalog.Service, svc types.ServiceConfig) map[string]string {
	// What the container sees: its env files and environment. --env-file
	// values only fill ${VAR} in the compose file; no container gets them.
	vals := map[string]string{}
	for _, ef := range svc.EnvFiles {
		path := ef.Path
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(v.file), path)
		}
		got, err := envfile.Read(path)
		if errors.Is(err, fs.ErrNotExist) && !bool(ef.Required) {
			continue // required: false
		} else if errors.Is(err, fs.ErrNotExist) {
			v.add(v.line("services", key, "env_file"), key, RuleEnvFile, "env file %s does not exist (lucidctl render writes it)", ef.Path)
			continue
		} else if err != nil {
			v.add(v.line("services", key, "env_file"), key, RuleEnvFile, "%v", err)
			continue
		}
		for k, val := range got {
			vals[k] = val
		}
	}
	for k, val := range svc.Environment {
		if val != nil && !slices.Contains(v.reported, strings.TrimPrefix(*val, "unset-")) {
			vals[k] = *val
		}
	}
	required := s.RequiredSecrets(vals["LUCID_MESH_URL"] != "")
	// A secret a service does not use is one more a compromise of it
	// gives away.
	for _, k := range slices.Sorted(maps.Keys(vals)) {
		if (slices.Contains(Secrets, k) || slices.Contains(PreviousKeys, k) || slices.Contains(ClusterSecrets, k) || k == ConsulConfigKey) && !s.Reads(k) {
			v.add(v.line("services", key), key, RuleExcessSecret, "%s is given %s, which it does not use (lucidctl render gives each service only its own)", s.Name, k)
		}
	}
	for _, k := range required {
		switch val := vals[k]; {
		case val == "":
			v.add(v.line("services", key), key, RuleSecret, "%s is required and neither its env files nor its environment set it", k)
		case len(val) < catalog.SecretMinLen:
			v.add(v.line("services", key), key, RuleSecret, "%s is %d characters; at least %d are required", k, len(val), catalog.SecretMinLen)
		}
	}
	return vals
}

// hostPort is a published port on the host.
type hostPort struct {
	ip, port, proto string
}

// checkPorts reports two services publishing the same host port; an empty
// or 0.0.0.0 host address takes the port on every address.
func (v *validation) checkPorts(project *types.Project, names []string) {
	type owner struct {
		service string
		line    int
	}
	// In order of appearance, so the problems come out the same every run.
	var seen []hostPort
	owners := map[hostPort]owner{}
	for _, name := range names {
		for i, p := range project.Services[name].Ports {
			if p.Published == "" {
				continue
			}
			proto := p.Protocol
			if proto == "" {
				proto = "tcp"
			}
			hp := hostPort{ip: p.HostIP, port: p.Published, proto: proto}
			if hp.ip == "0.0.0.0" || hp.ip == "::" {
				hp.ip = ""
			}
			line := v.line("services", name, "ports", i)
			for _, other := range seen {
				o := owners[other]
				if other.port == hp.port && other.proto == hp.proto && (other.ip == hp.ip || other.ip == "" || hp.ip == "") && o.service != name {
					v.add(line, name, RulePortCollision, "host port %s/%s is also published by %s (line %d)", hp.port, proto, o.service, o.line)
				}
			}
			if _, dup := owners[hp]; !dup {
				owners[hp] = owner{name, line}
				seen = append(seen, hp)
			}
		}
	}
}

// stripComment drops a YAML comment: a # at the start or after a space,
// outside quotes.
func stripComment(line string) string {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i]
		}
	}
	return line
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

func lineOfYAMLError(err error) int {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

// compose-go logs through logrus's global logger (unset variables, obsolete
// keys); Validate reports those itself, and a library must not print.
func init() { logrus.SetOutput(io.Discard) }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
