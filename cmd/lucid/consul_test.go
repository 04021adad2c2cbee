package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// runService runs `lucid <name>` in-process with env until the test ends,
// and returns its log.
func runService(t *testing.T, name string, env map[string]string) *testenv.SyncBuffer {
	t.Helper()
	log := &testenv.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Main(ctx, name, apps[name](), envconfig.Map(env), log) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s stopped with %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log.String())
		}
	})
	return log
}

// TestMeshAndGatewayThroughConsulWithACLs: Consul runs with ACLs and
// default deny (meshapi.ConsulAgentConfig); the mesh controller, holding
// the management token, registers the stack's services and gives the
// gateway its Consul token; the gateway, holding only that derived token,
// discovers every service through Consul and routes to it. The gateway's
// static upstreams lead nowhere, so only discovery can make this work.
func TestMeshAndGatewayThroughConsulWithACLs(t *testing.T) {
	const management = "7d2f41c8-0b6e-4a93-9e15-c3a8f0d26b47"
	// Only the tokens the services are configured with count.
	t.Setenv("CONSUL_HTTP_TOKEN", "00000000-0000-4000-8000-000000000000")
	cfg, err := meshapi.ConsulAgentConfig(management)
	if err != nil {
		t.Fatal(err)
	}
	agent := testenv.StartConsulAgentWithConfig(t, cfg)
	consulHost, consulPort, _ := net.SplitHostPort(agent.Addr)

	// Stand-ins for the four services behind the gateway: ready, and
	// answering with their name.
	mesh := map[string]string{
		"LUCID_ADDR":                "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
		"LUCID_DATA_DIR":            t.TempDir(),
		"LUCID_MESH_TOKEN":          strings.Repeat("m", catalog.SecretMinLen),
		"CONSUL_HOST":               consulHost,
		"CONSUL_PORT":               consulPort,
		"CONSUL_HTTP_TOKEN":         management,
		"LUCID_MESH_CHECK_INTERVAL": "1s",
		"LUCID_MESH_SYNC_INTERVAL":  "200ms",
	}
	_, gatewayToken := meshapi.ConsulToken(management, "gateway")
	jwtSecret := strings.Repeat("j", 40)
	gateway := map[string]string{
		"LUCID_ADDR":        "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
		"LUCID_DATA_DIR":    t.TempDir(),
		"JWT_SECRET_KEY":    jwtSecret,
		"LUCID_SERVICE_KEY": strings.Repeat("s", catalog.SecretMinLen),
		"CONSUL_HOST":       consulHost,
		"CONSUL_PORT":       consulPort,
		"CONSUL_HTTP_TOKEN": gatewayToken,
		"AUTH_SERVICE_URL":  "http://127.0.0.1:1",
	}
	for _, svc := range []string{"engine", "anchoring", "blocks", "datachain"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/ready" && r.URL.Path != "/health" {
				_, _ = io.WriteString(w, svc)
			}
		}))
		t.Cleanup(srv.Close)
		key := "LUCID_" + strings.ToUpper(svc) + "_URL"
		mesh[key] = srv.URL
		gateway[key] = "http://127.0.0.1:1" // nowhere: only Consul leads to srv
	}
	runService(t, "mesh", mesh)
	runService(t, "gateway", gateway)

	tok, _, err := auth.Mint([]byte(jwtSecret), auth.MintOptions{Subject: "alice", Tier: auth.TierEnterprise, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) string {
		req, _ := http.NewRequest(http.MethodGet, "http://"+gateway["LUCID_ADDR"]+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for path, svc := range map[string]string{
		"/api/v1/transactions/x": "engine",
		"/api/v1/anchors/x":      "anchoring",
		"/api/v1/blocks/x":       "blocks",
		"/api/v1/chunks/x":       "datachain",
	} {
		testenv.Eventually(t, 20*time.Second, "the gateway reaches "+svc+" found in Consul", func() bool { return get(path) == svc })
	}
}
