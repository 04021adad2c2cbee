package gateway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/routetable"
)

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
	g := startGateway(t, be.URL, map[string]string{routetable.EnvVar: file})
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
