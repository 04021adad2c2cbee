package gateway

import (
	"encoding/json"
	"net"
	"net/http"
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

// TestOwnEndpointsCountAgainstTheAsker: /ready and /metrics, which answer
// without a token, count against a budget of the asking address, apart
// from its API requests, so one address flooding them cannot starve the
// operator's monitor, which asks from another with a budget of its own,
// nor the flooding address's API requests starve its scrapes; /health is
// not counted.
func TestOwnEndpointsCountAgainstTheAsker(t *testing.T) {
	// The free tier's 60 a minute allow 7 at one instant (the test's
	// clock stands still).
	g := startGateway(t, newBackend(t).URL, map[string]string{"LUCID_RATE_FREE": "60", "LUCID_TRUSTED_PROXIES": "127.0.0.1"})
	flood := map[string]string{"X-Forwarded-For": "192.0.2.66"}
	for i := range 7 {
		p := []string{"/metrics", "/ready", "/%6Detrics"}[i%3]
		if resp, body := g.get(t, p, flood); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d (%s) within the budget: %d %s", i+1, p, resp.StatusCode, body)
		}
	}
	for _, p := range []string{"/metrics", "/ready", "/%6Detrics"} {
		if resp, body := g.get(t, p, flood); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s beyond the address's budget: %d %s, want 429 with Retry-After", p, resp.StatusCode, body)
		}
	}
	if resp, _ := g.get(t, "/auth/x", flood); resp.StatusCode != http.StatusOK {
		t.Errorf("an API request from the flooding address: %d, want its own budget", resp.StatusCode)
	}
	if resp, _ := g.get(t, "/health", flood); resp.StatusCode != http.StatusOK {
		t.Errorf("/health beyond the budget: %d, want 200 (not counted)", resp.StatusCode)
	}
	resp, body := g.get(t, "/metrics", map[string]string{"X-Forwarded-For": "192.0.2.9"})
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the monitor's /metrics from another address: %d", resp.StatusCode)
	}
	// Metered apart: scrapes are not the free tier's API traffic.
	if !strings.Contains(body, `lucid_gateway_ratelimit_decisions_total{outcome="limited",tier="own"} 3`) || !strings.Contains(body, `lucid_gateway_ratelimit_decisions_total{outcome="limited",tier="free"} 0`) {
		t.Errorf("the own endpoints' decisions are not metered apart:\n%s", body)
	}
}
