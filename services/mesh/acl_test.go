package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/consulacl"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// testManagement is Consul's management token in the tests.
const testManagement = "6c1e7f0a-3b2d-4e59-a8c7-91d04f2b6e13"

// startACLConsul runs a Consul agent with meshapi.ConsulAgentConfig's
// configuration: ACLs on, default deny, testManagement as management token.
func startACLConsul(t *testing.T) *testenv.ConsulAgent {
	t.Helper()
	cfg, err := meshapi.ConsulAgentConfig(testManagement)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.StartConsulAgentWithConfig(t, cfg)
}

// consulAs is a Consul client presenting token.
func consulAs(t *testing.T, addr, token string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: addr, Scheme: "http", Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// syncs is how many rounds of keeping Consul in place c has finished
// well, from its metrics.
func (c *controller) syncs(t *testing.T) float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	resp, err := client.Get(c.url + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `lucid_mesh_consul_syncs_total{result="ok"} `); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

func isDenied(err error) bool {
	var se consul.StatusError
	return errors.As(err, &se) && se.Code == 403
}

// TestConsulACLs, against the real agent with ACLs on and default deny: the
// controller registers the stack with the management token and keeps the
// gateway's policy and token, which can read healthy instances and do
// nothing else; without a token nothing can be read or written. The
// keeping is idempotent with two controllers, puts back an edited policy
// or token, and recreates what a Consul that lost its state forgot.
func TestConsulACLs(t *testing.T) {
	// A token in the process environment must change nothing: the
	// controller uses what its configuration says.
	t.Setenv("CONSUL_HTTP_TOKEN", "00000000-0000-4000-8000-000000000000")
	agent := startACLConsul(t)
	host, port, _ := net.SplitHostPort(agent.Addr)
	engine, blocks := newFakeEngine(t), newFakeEngine(t)
	env := map[string]string{
		"LUCID_MESH_URL":            "", // plain HTTP: the fakes speak no mTLS
		"CONSUL_HOST":               host,
		"CONSUL_PORT":               port,
		"CONSUL_HTTP_TOKEN":         testManagement,
		"LUCID_ENGINE_URL":          engine.URL,
		"LUCID_BLOCKS_URL":          blocks.URL,
		"LUCID_MESH_CHECK_INTERVAL": "200ms",
		"LUCID_MESH_SYNC_INTERVAL":  "200ms",
	}
	c := startController(t, env)

	accessor, secret := meshapi.ConsulToken(testManagement, "gateway")
	gateway := consulAs(t, agent.Addr, secret)
	// Consul's anonymous token: a client without a token would take
	// CONSUL_HTTP_TOKEN from the process environment.
	anonymous := consulAs(t, agent.Addr, "anonymous")
	management := consulAs(t, agent.Addr, testManagement)
	ctx := context.Background()
	healthy := func(cl *consul.Client, svc string) int {
		entries, _, err := cl.Health().Service(svc, "", true, (&consul.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return -1
		}
		return len(entries)
	}
	testenv.Eventually(t, 15*time.Second, "the gateway's token reads the healthy engine and blocks", func() bool {
		return healthy(gateway, "engine") == 1 && healthy(gateway, "blocks") == 1
	})
	entries, _, err := gateway.Health().Service("engine", "", true, nil)
	if err != nil || len(entries) != 1 || entries[0].Service.Port == 0 || entries[0].Service.ID != "lucid-engine" {
		t.Fatalf("the gateway's view of engine: %+v %v", entries, err)
	}

	t.Run("the gateway's token reads and nothing more", func(t *testing.T) {
		if n := healthy(gateway, "engine"); n != 1 {
			t.Errorf("healthy engines read with the gateway's token: %d", n)
		}
		err := gateway.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "evil", Name: "engine", Address: "10.6.6.6", Port: 8084})
		if !isDenied(err) {
			t.Errorf("register with the gateway's token: %v, want 403", err)
		}
		if err := gateway.Agent().ServiceDeregister("lucid-engine"); !isDenied(err) {
			t.Errorf("deregister with the gateway's token: %v, want 403", err)
		}
		if _, err := gateway.Catalog().Register(&consul.CatalogRegistration{Node: "evil", Address: "10.6.6.6", Service: &consul.AgentService{Service: "engine", Port: 8084}}, nil); !isDenied(err) {
			t.Errorf("catalog register with the gateway's token: %v, want 403", err)
		}
		if _, err := gateway.Catalog().Deregister(&consul.CatalogDeregistration{Node: "lucid-test", ServiceID: "lucid-engine"}, nil); !isDenied(err) {
			t.Errorf("catalog deregister with the gateway's token: %v, want 403", err)
		}
		if _, _, err := gateway.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{Name: "global-management"}}}, nil); !isDenied(err) {
			t.Errorf("a token made with the gateway's token: %v, want 403", err)
		}
		if _, err := gateway.KV().Put(&consul.KVPair{Key: "lucid", Value: []byte("x")}, nil); !isDenied(err) {
			t.Errorf("KV write with the gateway's token: %v, want 403", err)
		}
		if n := healthy(management, "engine"); n != 1 {
			t.Errorf("the engine after the attempts: %d instances", n)
		}
	})

	t.Run("without a token nothing", func(t *testing.T) {
		if n := healthy(anonymous, "engine"); n != 0 {
			t.Errorf("anonymous reads %d healthy engines", n)
		}
		if services, _, err := anonymous.Catalog().Services(nil); err == nil && len(services) != 0 {
			t.Errorf("anonymous lists services: %v", services)
		}
		err := anonymous.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "evil", Name: "engine", Address: "10.6.6.6", Port: 8084})
		if !isDenied(err) {
			t.Errorf("anonymous register: %v, want 403", err)
		}
		if err := anonymous.Agent().ServiceDeregister("lucid-engine"); !isDenied(err) {
			t.Errorf("anonymous deregister: %v, want 403", err)
		}
	})

	t.Run("kept idempotently by two controllers", func(t *testing.T) {
		before := c.syncs(t)
		second := startController(t, env)
		testenv.Eventually(t, 20*time.Second, "two more rounds of both controllers", func() bool {
			return c.syncs(t) >= before+2 && second.syncs(t) >= 2
		})
		policies, _, err := management.ACL().PolicyList(nil)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range policies {
			if p.Name == "lucid-gateway" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d policies named lucid-gateway", n)
		}
		tokens, _, err := management.ACL().TokenList(nil)
		if err != nil {
			t.Fatal(err)
		}
		n = 0
		for _, tok := range tokens {
			if strings.Contains(tok.Description, "Lucid gateway") {
				n++
				if tok.AccessorID != accessor {
					t.Errorf("a gateway token with accessor %s, want %s", tok.AccessorID, accessor)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d gateway tokens", n)
		}
		for _, log := range []string{c.log.String(), second.log.String()} {
			if strings.Contains(log, "differed") || strings.Contains(log, "replaced") {
				t.Errorf("the controllers undid each other:\n%s", log)
			}
		}
	})

	t.Run("an edited policy or token is put back", func(t *testing.T) {
		p, _, err := management.ACL().PolicyReadByName("lucid-gateway", nil)
		if err != nil || p == nil {
			t.Fatalf("policy: %v %v", p, err)
		}
		p.Rules = `service_prefix "" { policy = "write" }` + "\n" + `node_prefix "" { policy = "write" }`
		if _, _, err := management.ACL().PolicyUpdate(p, nil); err != nil {
			t.Fatal(err)
		}
		tok, _, err := management.ACL().TokenRead(accessor, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok.Policies = append(tok.Policies, &consul.ACLTokenPolicyLink{Name: "global-management"})
		if _, _, err := management.ACL().TokenUpdate(tok, nil); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 10*time.Second, "policy and token as Lucid keeps them", func() bool {
			p, _, err := management.ACL().PolicyReadByName("lucid-gateway", nil)
			tok, _, err2 := management.ACL().TokenRead(accessor, nil)
			return err == nil && err2 == nil && p.Rules == consulacl.Grants[0].Rules && onlyPolicy(tok, "lucid-gateway")
		})
		err = gateway.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "evil", Name: "engine", Address: "10.6.6.6", Port: 8084})
		if !isDenied(err) {
			t.Errorf("register with the gateway's token once put back: %v, want 403", err)
		}
	})

	t.Run("a Consul that forgot everything gets it back", func(t *testing.T) {
		agent.Restart(t) // a dev agent keeps nothing: no policy, no token, no registration
		testenv.Eventually(t, 20*time.Second, "the gateway's token reads the healthy engine again", func() bool {
			return healthy(gateway, "engine") == 1
		})
	})
	if strings.Contains(c.log.String(), testManagement) || strings.Contains(c.log.String(), secret) {
		t.Error("a Consul token reached the log")
	}

	t.Run("a new management token retires the gateway's old token", func(t *testing.T) {
		rotated := "3f9a1c2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
		_, _, err := management.ACL().TokenCreate(&consul.ACLToken{SecretID: rotated,
			Policies: []*consul.ACLTokenPolicyLink{{Name: "global-management"}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.stop(); err != nil {
			t.Fatal(err)
		}
		renv := maps.Clone(env)
		renv["CONSUL_HTTP_TOKEN"] = rotated
		startController(t, renv)
		_, newSecret := meshapi.ConsulToken(rotated, "gateway")
		fresh := consulAs(t, agent.Addr, newSecret)
		testenv.Eventually(t, 20*time.Second, "the new gateway token reads, the old one no longer", func() bool {
			return healthy(fresh, "engine") == 1 && healthy(gateway, "engine") == -1
		})
	})
}

// TestConsulTokenRequired: with CONSUL_HOST the controller needs Consul's
// management token, a UUID, and says so without printing it.
func TestConsulTokenRequired(t *testing.T) {
	for _, tok := range []string{"", "not-a-uuid-but-long-enough-for-a-secret-0123"} {
		env := map[string]string{
			"LUCID_DATA_DIR":   t.TempDir(),
			"LUCID_MESH_TOKEN": testToken,
			"CONSUL_HOST":      "127.0.0.1",
		}
		if tok != "" {
			env["CONSUL_HTTP_TOKEN"] = tok
		}
		err := service.Main(context.Background(), "mesh", New(), envconfig.Map(env), io.Discard)
		var ce *service.ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "CONSUL_HTTP_TOKEN") {
			t.Errorf("token %q: %v, want a configuration error naming CONSUL_HTTP_TOKEN", tok, err)
		}
		if tok != "" && strings.Contains(err.Error(), tok) {
			t.Errorf("the error shows the token: %v", err)
		}
	}
}

// TestConsulWithoutACLs: a Consul that runs without ACLs still gets the
// stack registered, but the controller is not ready, and says why.
func TestConsulWithoutACLs(t *testing.T) {
	agent := testenv.StartConsulAgent(t)
	engine := newFakeEngine(t)
	a := &App{members: map[string]*url.URL{"engine": mustParse(t, engine.URL)}, checkInterval: time.Second}
	reg, err := openRegistrar(filepath.Join(t.TempDir(), "mesh.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closeRegistrar(t, reg)
	reg.consul = consulAs(t, agent.Addr, testManagement)
	reg.management = testManagement
	reg.desired = a.stackRegistrations()
	reg.sync(context.Background())
	if _, err := reg.check(context.Background()); err == nil || !strings.Contains(err.Error(), "without ACLs") {
		t.Errorf("readiness against a Consul without ACLs: %v", err)
	}
	if svc, _, err := reg.consul.Agent().Service("lucid-engine", nil); err != nil || svc == nil {
		t.Errorf("the engine is not registered: %v", err)
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
