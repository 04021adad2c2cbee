// Package consulready tells when a Consul agent is ready for Lucid's
// services: it has a leader, and the results of its checks reach the
// catalog, which the gateway reads.
//
// The second is not given with the first. A registration through the
// agent reaches the catalog at once, but a check's result only through the
// agent's background copy of its state; when that copy fails (the first,
// made before the agent's leader or the ACL tokens were ready, as on a
// loaded machine) the agent copies nothing more for 15 to 30 seconds, and
// every service stays critical in the catalog meanwhile.
package consulready

import (
	"context"
	"errors"
	"fmt"

	consul "github.com/hashicorp/consul/api"
)

// ProbeService is the service Check registers while the agent is not yet
// ready, and removes once it is.
const ProbeService = "lucid-consul-probe"

// Check makes one attempt, as a readiness probe does: it returns nil once
// the agent at agentAddr (host:port of its HTTP API, which c talks to) has
// a leader and shows a check of its own passing in the catalog. The first
// attempts register ProbeService, checked against the agent itself; the
// one that finds it passing removes it.
func Check(ctx context.Context, c *consul.Client, agentAddr string) error {
	q := (&consul.QueryOptions{}).WithContext(ctx)
	leader, err := c.Status().LeaderWithQueryOptions(q)
	if err != nil {
		return err
	}
	if leader == "" {
		return errors.New("consul has no leader yet")
	}
	have, err := c.Agent().ServicesWithFilterOpts("", q)
	if err != nil {
		return err
	}
	// Registered once: registering it again would start its check over.
	if have[ProbeService] == nil {
		reg := &consul.AgentServiceRegistration{ID: ProbeService, Name: ProbeService, Port: 1,
			Check: &consul.AgentServiceCheck{HTTP: "http://" + agentAddr + "/v1/status/leader", Interval: "100ms", Timeout: "1s"}}
		if err := c.Agent().ServiceRegisterOpts(reg, consul.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
			return fmt.Errorf("consul refused a registration (its ACL tokens may not be written yet): %w", err)
		}
	}
	passing, _, err := c.Health().Service(ProbeService, "", true, q)
	if err != nil {
		return err
	}
	if len(passing) == 0 {
		return errors.New("consul's catalog does not show its agent's checks yet; the agent copies them within 30s")
	}
	if err := c.Agent().ServiceDeregisterOpts(ProbeService, q); err != nil {
		return fmt.Errorf("remove the probe's registration: %w", err)
	}
	return nil
}
