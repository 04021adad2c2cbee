package routetable

import (
	"reflect"
	"strings"
	"testing"
)

func TestDefaultRoundTrip(t *testing.T) {
	out, err := Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("defaults", out)
	if err != nil {
		t.Fatalf("the printed defaults do not parse: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, Default()) {
		t.Errorf("round trip changed the table:\n%s", out)
	}
	if !strings.Contains(string(out), "timeout: 5m0s") {
		t.Errorf("timeouts are not written as durations:\n%s", out)
	}
}

func TestParseDefaultsAndNormalises(t *testing.T) {
	routes, err := Parse("r.yaml", []byte(`
routes:
  - prefix: /v2/anchors/
    service: anchoring
    strip: true
    methods: [get, POST]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{{Prefix: "/v2/anchors", Service: "anchoring", Strip: true, Methods: []string{"GET", "POST"}, Timeout: DefaultTimeout}}
	if !reflect.DeepEqual(routes, want) {
		t.Errorf("got %+v, want %+v", routes, want)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"misspelt key", "routes:\n  - prefix: /x\n    service: engine\n    stirp: true\n", `r.yaml:4:5: unknown key "stirp" in routes[0] (did you mean "strip"?)`},
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
		{"bad timeout", "routes:\n  - prefix: /x\n    service: engine\n    timeout: soon\n", "r.yaml: line 4: cannot unmarshal !!str `soon` into a duration (such as 30s or 2m)"},
		{"duplicate", "routes:\n  - prefix: /x\n    service: engine\n  - prefix: /x/\n    service: blocks\n", "r.yaml:4: route 2: prefix /x is already routed on line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Every problem at once, not just the first.
	_, err := Parse("r.yaml", []byte("routes:\n  - prefix: x\n    service: nope\n    timeout: 1ms\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Errorf("want three problems, got %v", err)
	}
}
