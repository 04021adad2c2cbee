package gateway

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
)

func TestDefaultRoutesRoundTrip(t *testing.T) {
	out, err := MarshalRoutes(DefaultRoutes())
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRoutes("defaults", out)
	if err != nil {
		t.Fatalf("the printed defaults do not parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, DefaultRoutes()) {
		t.Errorf("round trip changed the table:\n%s", out)
	}
	if !strings.Contains(string(out), "timeout: 5m0s") {
		t.Errorf("timeouts are not written as durations:\n%s", out)
	}
}

func TestParseRoutesDefaultsAndNormalises(t *testing.T) {
	routes, err := ParseRoutes("r.yaml", []byte(`
routes:
  - prefix: /v2/anchors/
    service: anchoring
    strip: true
    methods: [get, POST]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{{Prefix: "/v2/anchors", Service: "anchoring", Strip: true, Methods: []string{"GET", "POST"}, Timeout: defaultRouteTimeout}}
	if !reflect.DeepEqual(routes, want) {
		t.Errorf("got %+v, want %+v", routes, want)
	}
}

func TestParseRoutesRefuses(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"misspelt key", "routes:\n  - prefix: /x\n    service: engine\n    stirp: true\n", "field stirp not found"},
		{"not YAML", "routes: [\n", "r.yaml: yaml:"},
		{"empty", "routes: []\n", "no routes"},
		{"no prefix", "routes:\n  - service: engine\n", "r.yaml:2: route 1 (): prefix is required"},
		{"relative prefix", "routes:\n  - prefix: api\n    service: engine\n", "must start with /"},
		{"wildcard", "routes:\n  - prefix: /api/{id}\n    service: engine\n", "plain path segments"},
		{"climbs", "routes:\n  - prefix: /api/../x\n    service: engine\n", "plain path segments"},
		{"dot segment", "routes:\n  - prefix: /a/./b\n    service: engine\n", "plain path segments"},
		{"double slash", "routes:\n  - prefix: /a//b\n    service: engine\n", "plain path segments"},
		{"needs escaping", "routes:\n  - prefix: /café\n    service: engine\n", "plain path segments"},
		{"shadows health", "routes:\n  - prefix: /health\n    service: engine\n", "would hide the gateway's own /health"},
		{"under metrics", "routes:\n  - prefix: /metrics/x\n    service: engine\n", "would hide the gateway's own /metrics"},
		{"the mesh CA", "routes:\n  - prefix: /ca\n    service: mesh\n", `service "mesh" is not one the gateway routes to`},
		{"itself", "routes:\n  - prefix: /gw\n    service: gateway\n", `service "gateway" is not one`},
		{"unknown method", "routes:\n  - prefix: /x\n    service: engine\n    methods: [FETCH]\n", `method "FETCH" is not one of`},
		{"long timeout", "routes:\n  - prefix: /x\n    service: engine\n    timeout: 2h\n", "timeout 2h0m0s is outside"},
		{"bad timeout", "routes:\n  - prefix: /x\n    service: engine\n    timeout: soon\n", "r.yaml: yaml:"},
		{"duplicate", "routes:\n  - prefix: /x\n    service: engine\n  - prefix: /x/\n    service: blocks\n", "r.yaml:4: route 2: prefix /x is already routed on line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRoutes("r.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Every problem at once, not just the first.
	_, err := ParseRoutes("r.yaml", []byte("routes:\n  - prefix: x\n    service: nope\n    timeout: 1ms\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("want three problems, got %v", err)
	}
}

// A route table from LUCID_GATEWAY_ROUTES replaces the default one: its
// prefixes route (stripped, limited to their methods, public or not) and
// the default ones are gone.
func TestGatewayServesConfiguredRoutes(t *testing.T) {
	be := newBackend(t)
	file := filepath.Join(t.TempDir(), "routes.yaml")
	if err := os.WriteFile(file, []byte(`routes:
  - prefix: /v2/anchors
    service: anchoring
    strip: true
    methods: [GET]
  - prefix: /status
    service: engine
    public: true
    timeout: 2s
  - prefix: /
    service: blocks
`), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, be.URL, map[string]string{EnvRoutes: file})
	if len(g.app.routes) != 3 {
		t.Fatalf("the file's table did not replace the default: %+v", g.app.routes)
	}
	if got := g.app.routes[1].Timeout; got != 2*time.Second {
		t.Errorf("timeout = %s", got)
	}
	tok := map[string]string{"Authorization": "Bearer " + g.token(t, "alice", auth.TierFree)}
	if resp, body := g.get(t, "/v2/anchors/abc", tok); resp.StatusCode != 200 || body != "upstream:/abc" {
		t.Errorf("configured route: %d %q", resp.StatusCode, body)
	}
	if resp, _ := g.get(t, "/v2/anchors/abc", nil); resp.StatusCode != 401 {
		t.Errorf("authenticated route without a token: %d", resp.StatusCode)
	}
	if resp, body := g.get(t, "/status", nil); resp.StatusCode != 200 || body != "upstream:/status" {
		t.Errorf("public route: %d %q", resp.StatusCode, body)
	}
	// Paths no other route takes go to the catch-all route; the
	// gateway's own endpoints stay its own.
	if resp, body := g.get(t, "/api/v1/anchors/abc", tok); resp.StatusCode != 200 || body != "upstream:/api/v1/anchors/abc" {
		t.Errorf("catch-all route: %d %q", resp.StatusCode, body)
	}
	if resp, body := g.get(t, "/health", nil); resp.StatusCode != 200 || strings.HasPrefix(body, "upstream:") {
		t.Errorf("/health under a catch-all route: %d %q", resp.StatusCode, body)
	}
	if resp, _ := g.request(t, "POST", "/v2/anchors/abc", tok); resp.StatusCode != 405 {
		t.Errorf("POST on a GET-only route: %d", resp.StatusCode)
	}
}
