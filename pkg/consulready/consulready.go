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
//
// It speaks plain HTTP rather than through Consul's API client, which
// would take settings from the process environment (CONSUL_NAMESPACE,
// CONSUL_CACERT and the like) that an operator's shell may hold for
// another Consul.
package consulready

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// ProbeService is the service Check registers while the agent is not yet
// ready, and removes once it is.
const ProbeService = "lucid-consul-probe"

// probeTarget is the probe's meta key naming what its check asks.
const probeTarget = "lucid_probe_target"

// Agent is a Consul agent's HTTP API.
type Agent struct {
	// Addr is host:port of its HTTP API.
	Addr string
	// Token is sent with every request (none when empty).
	Token string
	// Client makes the requests; its timeout bounds each.
	Client *http.Client
}

// Check makes one attempt, as a readiness probe does: it returns nil once
// the agent has a leader and shows a check of its own passing in the
// catalog. The first attempts register ProbeService, checked against the
// agent itself; the one that finds it passing removes it.
func (a Agent) Check(ctx context.Context) error {
	var leader string
	if err := a.call(ctx, http.MethodGet, "/v1/status/leader", nil, &leader); err != nil {
		return err
	}
	if leader == "" {
		return errors.New("consul has no leader yet")
	}
	var services map[string]struct{ Meta map[string]string }
	if err := a.call(ctx, http.MethodGet, "/v1/agent/services", nil, &services); err != nil {
		return err
	}
	// Registered once: registering it again would start its check over.
	// One left by an earlier run that asked the agent at another address
	// (its check failing for good) is registered again, to this one.
	target := "http://" + a.Addr + "/v1/status/leader"
	if p, ok := services[ProbeService]; !ok || p.Meta[probeTarget] != target {
		reg := map[string]any{"ID": ProbeService, "Name": ProbeService, "Port": 1, "Meta": map[string]string{probeTarget: target},
			// 1s is the shortest interval Consul runs a check at.
			"Check": map[string]string{"HTTP": target, "Interval": "1s", "Timeout": "1s"}}
		if err := a.call(ctx, http.MethodPut, "/v1/agent/service/register", reg, nil); err != nil {
			return fmt.Errorf("consul refused a registration (its ACL tokens may not be written yet): %w", err)
		}
	}
	// The probe's own check, as the catalog has it (a filter on passing
	// would also weigh the node's checks, such as its maintenance).
	var checks []struct{ CheckID, Status string }
	if err := a.call(ctx, http.MethodGet, "/v1/health/checks/"+ProbeService, nil, &checks); err != nil {
		return err
	}
	passing := false
	for _, c := range checks {
		passing = passing || c.CheckID == "service:"+ProbeService && c.Status == "passing"
	}
	if !passing {
		return errors.New("consul's catalog does not show its agent's checks yet; the agent copies them with its next sync of its whole state")
	}
	if err := a.call(ctx, http.MethodPut, "/v1/agent/service/deregister/"+ProbeService, nil, nil); err != nil {
		return fmt.Errorf("remove the probe's registration: %w", err)
	}
	return nil
}

// call sends one request, with body as JSON when not nil, and decodes the
// answer into out when not nil.
func (a Agent) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+a.Addr+path, rd)
	if err != nil {
		return err
	}
	if a.Token != "" {
		req.Header.Set("X-Consul-Token", a.Token)
	}
	resp, err := a.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("consul %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}
