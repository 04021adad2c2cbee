package consulready_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/consulready"
)

const management = "6d3b3e54-0c8f-4a4f-8f55-3d0b8e2f7c11"

// TestCheckWaitsForTheCatalog, against a real Consul agent: an agent whose
// copy of its state to the catalog failed is not ready, though it has a
// leader and takes registrations; once it copies again it is, and the
// probe's registration is gone.
func TestCheckWaitsForTheCatalog(t *testing.T) {
	// The agent's token is not kept on disk: the test changes it.
	agent := testenv.StartConsulAgentWithConfig(t, []byte(`{"acl":{"enabled":true,"default_policy":"deny",`+
		`"tokens":{"initial_management":"`+management+`","agent":"`+management+`"}}}`))
	client, err := consul.NewClient(&consul.Config{Address: agent.Addr, Scheme: "http", Token: management})
	if err != nil {
		t.Fatal(err)
	}
	ready := consulready.Agent{Addr: agent.Addr, Token: management, Client: &http.Client{Timeout: 2 * time.Second}}
	check := func() error { return ready.Check(context.Background()) }
	testenv.Eventually(t, 10*time.Second, "a started agent ready", func() bool { return check() == nil })

	agent.BreakCatalogCopy(t)
	// Its probe's check passes in the agent at once, never in the catalog.
	testenv.Eventually(t, 10*time.Second, "the probe passing in the agent", func() bool {
		err := check()
		if err == nil {
			t.Fatal("ready while the agent copies nothing to its catalog")
		}
		checks, err := client.Agent().Checks()
		return err == nil && len(checks) == 1 && checks["service:"+consulready.ProbeService].Status == consul.HealthPassing
	})
	if err := check(); err == nil || !strings.Contains(err.Error(), "catalog does not show its agent's checks") {
		t.Fatalf("an agent that copies nothing: %v", err)
	}

	agent.MendCatalogCopy(t)
	testenv.Eventually(t, 10*time.Second, "ready once the agent copies again", func() bool { return check() == nil })
	services, err := client.Agent().Services()
	if err != nil || len(services) != 0 {
		t.Errorf("services left with the agent: %v %v", services, err)
	}
}

// TestCheckReplacesAStaleProbe, against a real Consul agent: a probe an
// earlier run left behind, whose check asks an address where no agent
// answers, is registered again to this agent, so Check passes rather
// than wait on a check that fails for good.
func TestCheckReplacesAStaleProbe(t *testing.T) {
	agent := testenv.StartConsulAgent(t)
	client, err := consul.NewClient(&consul.Config{Address: agent.Addr, Scheme: "http"})
	if err != nil {
		t.Fatal(err)
	}
	gone := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	err = client.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: consulready.ProbeService, Name: consulready.ProbeService, Port: 1,
		Meta:  map[string]string{"lucid_probe_target": "http://" + gone + "/v1/status/leader"},
		Check: &consul.AgentServiceCheck{HTTP: "http://" + gone + "/v1/status/leader", Interval: "1s", Timeout: "1s"}})
	if err != nil {
		t.Fatal(err)
	}
	ready := consulready.Agent{Addr: agent.Addr, Client: &http.Client{Timeout: 2 * time.Second}}
	testenv.Eventually(t, 15*time.Second, "ready beside a stale probe", func() bool { return ready.Check(context.Background()) == nil })
	if services, err := client.Agent().Services(); err != nil || len(services) != 0 {
		t.Errorf("services left with the agent: %v %v", services, err)
	}
}
