package gateway

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/consulacl"
	"github.com/pickme/lucid/pkg/envconfig"
)

// instanceServer is a backend that can be made to fail its health check.
type instanceServer struct {
	*httptest.Server
	name string
	sick atomic.Bool
	hits atomic.Int64
}

func newInstance(t *testing.T, name string) *instanceServer {
	s := &instanceServer{name: name}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			if s.sick.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		s.hits.Add(1)
		_, _ = w.Write([]byte(name))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *instanceServer) hostPort() (string, int) {
	h, p, _ := net.SplitHostPort(s.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return h, n
}

const management = "5b0d9c3e-2a71-4f86-b4e2-7c19a0d3f658"

// startACLConsul runs Consul with ACLs on and default deny, and gives the
// gateway its token as the mesh controller would (policy and ids from
// pkg/consulacl and meshapi.ConsulToken). It returns the agent's address,
// a client with the management token, and the gateway's token.
func startACLConsul(t *testing.T) (string, *consul.Client, string) {
	t.Helper()
	cfg, err := meshapi.ConsulAgentConfig(management)
	if err != nil {
		t.Fatal(err)
	}
	addr := testenv.StartConsulAgentWithConfig(t, cfg).Addr
	c, err := consul.NewClient(&consul.Config{Address: addr, Scheme: "http", Token: management})
	if err != nil {
		t.Fatal(err)
	}
	grant := consulacl.Grants[0]
	accessor, secret := meshapi.ConsulToken(management, grant.Service)
	testenv.Eventually(t, 15*time.Second, "the gateway's policy and token made", func() bool {
		if p, _, err := c.ACL().PolicyReadByName(grant.Policy, nil); err != nil || p == nil {
			if _, _, err := c.ACL().PolicyCreate(&consul.ACLPolicy{Name: grant.Policy, Rules: grant.Rules}, nil); err != nil {
				return false
			}
		}
		_, _, err := c.ACL().TokenCreate(&consul.ACLToken{AccessorID: accessor, SecretID: secret, Policies: []*consul.ACLTokenPolicyLink{{Name: grant.Policy}}}, nil)
		return err == nil
	})
	return addr, c, secret
}

// TestDiscoveryFollowsConsul: the gateway routes to Consul's healthy
// instances of a service, follows a deregistration and a failing health
// check within a second, and never routes to a failing instance. Consul
// runs with ACLs; the gateway reads with its own token.
func TestDiscoveryFollowsConsul(t *testing.T) {
	// Only the configured token counts, not one in the process environment.
	t.Setenv(consulacl.EnvToken, "00000000-0000-4000-8000-000000000000")
	addr, c, gatewayToken := startACLConsul(t)
	a, b := newInstance(t, "a"), newInstance(t, "b")
	register := func(id string, s *instanceServer) {
		host, port := s.hostPort()
		err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{
			ID: id, Name: "anchoring", Address: host, Port: port,
			Check: &consul.AgentServiceCheck{HTTP: s.URL + "/health", Interval: "200ms", Timeout: "1s"},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	register("anchoring-a", a)
	register("anchoring-b", b)

	host, port, _ := net.SplitHostPort(addr)
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"CONSUL_HOST": host, "CONSUL_PORT": port, consulacl.EnvToken: gatewayToken})
	g.app.now = time.Now // health ejection and Consul run on real time
	g.now = time.Now()
	tok := g.token(t, "u", "enterprise")
	hitsOf := func(n int) map[string]int {
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			_, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok})
			seen[body]++
		}
		return seen
	}
	testenv.Eventually(t, 10*time.Second, "both instances in use", func() bool {
		s := hitsOf(6)
		return s["a"] > 0 && s["b"] > 0
	})

	// b fails its health check: within a second nothing goes to it.
	b.sick.Store(true)
	start := time.Now()
	testenv.Eventually(t, 5*time.Second, "the sick instance is out", func() bool { return hitsOf(6)["b"] == 0 })
	// How fast is a figure to report, not a pass/fail line on a shared
	// machine: Consul's 200 ms check plus a blocking query's answer.
	t.Logf("stopped routing to the failing instance after %s", time.Since(start))
	if s := hitsOf(20); s["b"] != 0 || s["a"] != 20 {
		t.Errorf("after the health check failed: %v", s)
	}
	// a is deregistered, b recovers: traffic follows.
	b.sick.Store(false)
	if err := c.Agent().ServiceDeregister("anchoring-a"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "traffic moves to b", func() bool {
		s := hitsOf(6)
		return s["b"] == 6
	})
}

// TestGatewayConsulToken: with CONSUL_HOST the gateway needs its own
// Consul token, a UUID, and names the variable without printing it.
func TestGatewayConsulToken(t *testing.T) {
	for _, tc := range []struct {
		token string
		ok    bool
	}{{"", false}, {"a-token-that-is-long-enough-but-no-uuid-at-all", false}, {"0d5030bc-713c-4486-9149-9632ab6ad740", true}} {
		env := map[string]string{"JWT_SECRET_KEY": secret, "CONSUL_HOST": "127.0.0.1"}
		for _, svc := range []string{"ENGINE", "ANCHORING", "BLOCKS", "DATACHAIN"} {
			env["LUCID_"+svc+"_URL"] = "http://127.0.0.1:1"
		}
		env["AUTH_SERVICE_URL"] = "http://127.0.0.1:1"
		if tc.token != "" {
			env[consulacl.EnvToken] = tc.token
		}
		a := New().(*App)
		r := envconfig.New(envconfig.Map(env))
		a.Configure(r)
		err := r.Err()
		switch {
		case tc.ok && (err != nil || a.consulToken != tc.token):
			t.Errorf("token %q: %v, kept %q", tc.token, err, a.consulToken)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), consulacl.EnvToken)):
			t.Errorf("token %q: %v, want an error naming %s", tc.token, err, consulacl.EnvToken)
		case !tc.ok && tc.token != "" && strings.Contains(err.Error(), tc.token):
			t.Errorf("the error shows the token: %v", err)
		}
	}
}
