// Package routetable is the gateway's route table: which path prefixes go
// to which service, stripped or not, public or authenticated, for which
// methods and with what timeout. The gateway runs it; lucidctl checks it
// and ships it to a Pi. The default is DESIGN.md's table; an operator's
// YAML file (EnvVar) replaces it whole.
package routetable

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/yamlkeys"
)

// EnvVar names a YAML file that replaces the default route table.
const EnvVar = "LUCID_GATEWAY_ROUTES"

// AuthService names the Phase 1 auth service in a route. It is outside the
// Lucid catalog and the stack: not in the mesh or Consul, not probed, and
// the only upstream that sees a client's bearer token.
const AuthService = "auth"

// Route sends requests whose path starts with Prefix to a service.
type Route struct {
	Prefix string `yaml:"prefix"`
	// Service is a catalog name, or AuthService.
	Service string `yaml:"service"`
	// Strip removes Prefix from the path sent upstream.
	Strip bool `yaml:"strip,omitempty"`
	// Public routes need no token (they are still rate limited by IP).
	Public bool `yaml:"public,omitempty"`
	// Methods, if set, are the only methods allowed.
	Methods []string `yaml:"methods,omitempty,flow"`
	// Timeout bounds the wait for the upstream's response headers.
	Timeout time.Duration `yaml:"timeout"`
}

// Bounds and default of a route's timeout.
const (
	DefaultTimeout = 30 * time.Second
	minTimeout     = 100 * time.Millisecond
	maxTimeout     = time.Hour
)

// Default is DESIGN.md's route table. The engine's routes are for reading
// the chain: users anchor through session anchoring, and the engine takes
// transactions from it alone (it refuses the gateway's anyway).
func Default() []Route {
	const t = DefaultTimeout
	read := []string{"GET", "HEAD"}
	return []Route{
		{Prefix: "/auth", Service: AuthService, Public: true, Timeout: t},
		{Prefix: "/blockchain", Service: "engine", Strip: true, Methods: read, Timeout: t},
		{Prefix: "/api/v1/transactions", Service: "engine", Methods: read, Timeout: t},
		{Prefix: "/api/v1/anchors", Service: "anchoring", Timeout: t},
		{Prefix: "/api/v1/blocks", Service: "blocks", Timeout: t},
		{Prefix: "/api/v1/chain", Service: "blocks", Timeout: 5 * time.Minute}, // audits stream
		{Prefix: "/api/v1/chunks", Service: "datachain", Timeout: 2 * time.Minute},
		{Prefix: "/api/v1/sessions", Service: "datachain", Timeout: t},
	}
}

// routesFile is the YAML form of a route table.
type routesFile struct {
	Routes []Route `yaml:"routes"`
}

// Load reads the route table from path, or returns Default when path is
// "".
func Load(path string) ([]Route, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("route table: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and checks a route table; name is the file's name for
// messages. Every problem is reported, each with its line.
func Parse(name string, data []byte) ([]Route, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var f routesFile
	// A misspelt key must not silently mean "false": every one is named,
	// with the keys allowed there.
	if errs := yamlkeys.Check(name, &doc, &f); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		// In the file's terms rather than Go's.
		msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  ")
		msg = strings.ReplaceAll(msg, "into time.Duration", "into a duration (such as 30s or 2m)")
		return nil, fmt.Errorf("%s: %s", name, msg)
	}
	lines := routeLines(&doc)
	var errs []error
	seen := map[string]int{}
	for i := range f.Routes {
		rt := &f.Routes[i]
		line := 0
		if i < len(lines) {
			line = lines[i]
		}
		for _, err := range checkRoute(rt) {
			errs = append(errs, fmt.Errorf("%s:%d: route %d (%s): %w", name, line, i+1, rt.Prefix, err))
		}
		if prev, dup := seen[rt.Prefix]; dup && rt.Prefix != "" {
			errs = append(errs, fmt.Errorf("%s:%d: route %d: prefix %s is already routed on line %d", name, line, i+1, rt.Prefix, prev))
		}
		seen[rt.Prefix] = line
	}
	if len(f.Routes) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no routes (a top-level \"routes:\" list is required)", name))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return f.Routes, nil
}

// routeLines is the line of each item of the top-level routes list.
func routeLines(doc *yaml.Node) []int {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	m := doc.Content[0].Content
	for i := 0; i+1 < len(m); i += 2 {
		if m[i].Value == "routes" && m[i+1].Kind == yaml.SequenceNode {
			var out []int
			for _, item := range m[i+1].Content {
				out = append(out, item.Line)
			}
			return out
		}
	}
	return nil
}

// plainPathChar reports whether c may appear in a route prefix as it is.
func plainPathChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~/", c)
}

// reservedPaths are the gateway's own endpoints; no route may shadow them.
var reservedPaths = []string{"/health", "/ready", "/metrics"}

// checkRoute validates one route and fills in its defaults.
func checkRoute(rt *Route) []error {
	var errs []error
	switch p := rt.Prefix; {
	case p == "":
		errs = append(errs, errors.New("prefix is required"))
	case !strings.HasPrefix(p, "/"):
		errs = append(errs, fmt.Errorf("prefix %q must start with /", p))
	case strings.IndexFunc(p, func(c rune) bool { return !plainPathChar(c) }) >= 0 || path.Clean(p) != strings.TrimSuffix(p, "/") && p != "/":
		// Only what needs no escaping and no cleaning: a request path is
		// matched unescaped and clean, and ServeMux reads braces as
		// wildcards.
		errs = append(errs, fmt.Errorf("prefix %q may hold only plain path segments (letters, digits, - . _ ~)", p))
	default:
		if p != "/" {
			rt.Prefix = strings.TrimSuffix(p, "/")
		}
		for _, r := range reservedPaths {
			if rt.Prefix == r || strings.HasPrefix(rt.Prefix, r+"/") {
				errs = append(errs, fmt.Errorf("prefix %s would hide the gateway's own %s", rt.Prefix, r))
			}
		}
	}
	// Only the services the gateway may call: never itself or the mesh CA.
	if !slices.Contains(routable(), rt.Service) {
		errs = append(errs, fmt.Errorf("service %q is not one the gateway routes to (%s)", rt.Service, strings.Join(routable(), ", ")))
	}
	for i, m := range rt.Methods {
		m = strings.ToUpper(strings.TrimSpace(m))
		if !slices.Contains(routeMethods, m) {
			errs = append(errs, fmt.Errorf("method %q is not one of %s", rt.Methods[i], strings.Join(routeMethods, ", ")))
		}
		rt.Methods[i] = m
	}
	switch {
	case rt.Timeout == 0:
		rt.Timeout = DefaultTimeout
	case rt.Timeout < minTimeout || rt.Timeout > maxTimeout:
		errs = append(errs, fmt.Errorf("timeout %s is outside %s..%s", rt.Timeout, minTimeout, maxTimeout))
	}
	return errs
}

var routeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// routable lists the services a route may name: the Phase 1 auth service
// and the ones the catalog lets the gateway call.
func routable() []string {
	gw, _ := catalog.Lookup("gateway")
	return append([]string{AuthService}, gw.Calls...)
}

// Marshal renders a route table in the form Parse reads.
func Marshal(routes []Route) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(routesFile{Routes: routes}); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
