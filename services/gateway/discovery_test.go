package gateway

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/internal/testenv"
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

// TestDiscoveryFollowsConsul: the gateway routes to Consul's healthy
// instances of a service, follows a deregistration and a failing health
// check within a second, and never routes to a failing instance.
func TestDiscoveryFollowsConsul(t *testing.T) {
	addr := testenv.StartConsul(t)
	cfg := consul.DefaultConfig()
	cfg.Address = addr
	c, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
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
	g := startGateway(t, be.URL, map[string]string{"CONSUL_HOST": host, "CONSUL_PORT": port})
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
