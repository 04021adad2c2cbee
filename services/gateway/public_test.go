package gateway

import (
	"encoding/json"
	"net"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// TestPublicEndpointsShowNoInternals: the gateway's /ready and /metrics
// answer anyone, so after failures of every kind (an upstream down, Redis
// down under either policy, bad tokens) neither shows an internal address
// or an error's text; /ready still names its checks with their status.
func TestPublicEndpointsShowNoInternals(t *testing.T) {
	be := newBackend(t)
	_, backendPort, _ := net.SplitHostPort(strings.TrimPrefix(be.URL, "http://"))
	internals := []string{"127.0.0.1", ":" + backendPort, "redis://", "connection refused", "dial tcp", "no healthy", "http://"}
	for _, policy := range []string{"local", "closed"} {
		g := startGateway(t, be.URL, map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0", envOnError: policy, "LUCID_RATE_ENTERPRISE": "100000"})
		g.app.pools["anchoring"].set(urls(mustURL(t, "http://127.0.0.1:1")))
		hdr := map[string]string{"Authorization": "Bearer " + g.token(t, "alice", auth.TierEnterprise)}
		for range 3 {
			g.get(t, "/api/v1/anchors/x", hdr) // 502, or 503 when closed
			g.get(t, "/api/v1/blocks/1", hdr)
			g.get(t, "/api/v1/blocks/1", map[string]string{"Authorization": "Bearer nope"})
		}

		resp, body := g.get(t, "/ready", nil)
		var rd service.Readiness
		if err := json.Unmarshal([]byte(body), &rd); err != nil {
			t.Fatalf("%s: /ready: %v: %s", policy, err, body)
		}
		checks := map[string]string{}
		for _, c := range rd.Checks {
			checks[c.Name] = c.Status
		}
		// The upstreams check fails once the dead instance is probed.
		if checks["upstreams"] == "" {
			t.Errorf("%s: /ready lacks the upstreams check: %s", policy, body)
		}
		switch policy {
		case "closed": // Redis is a dependency: failing, without its error
			if resp.StatusCode != 503 || checks["ratelimit-redis"] != "fail" {
				t.Errorf("%s: /ready %d %s", policy, resp.StatusCode, body)
			}
		case "local": // the gateway serves without Redis
			if _, ok := checks["ratelimit-redis"]; ok {
				t.Errorf("%s: Redis is a readiness check: %s", policy, body)
			}
		}
		_, metrics := g.get(t, "/metrics", nil)
		for _, s := range internals {
			if strings.Contains(body, s) {
				t.Errorf("%s: /ready shows %q: %s", policy, s, body)
			}
			if i := strings.Index(metrics, s); i >= 0 {
				t.Errorf("%s: /metrics shows %q: ...%s...", policy, s, metrics[max(0, i-200):min(len(metrics), i+100)])
			}
		}
	}
}
