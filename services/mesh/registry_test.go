package mesh

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
)

// fakeEngine answers /ready, or fails it when sick.
type fakeEngine struct {
	*httptest.Server
	sick atomic.Bool
}

func newFakeEngine(t *testing.T) *fakeEngine {
	f := &fakeEngine{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.sick.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func statusOf(in []meshapi.Instance, id string) string {
	for _, i := range in {
		if i.ID == id {
			return i.Status
		}
	}
	return ""
}

// TestRegistrationFollowsConsul, against a real Consul agent: the stack's
// services are registered with a health check, outside services can be
// added and removed, everything comes back after Consul restarts without
// restarting anything else, and the stack is deregistered on shutdown.
func TestRegistrationFollowsConsul(t *testing.T) {
	agent := testenv.StartConsulAgent(t)
	host, port, _ := net.SplitHostPort(agent.Addr)
	engine := newFakeEngine(t)
	c := startController(t, map[string]string{
		"LUCID_MESH_URL":            "", // plain HTTP: the fake engine speaks no mTLS
		"CONSUL_HOST":               host,
		"CONSUL_PORT":               port,
		"LUCID_ENGINE_URL":          engine.URL,
		"LUCID_MESH_CHECK_INTERVAL": "200ms",
		"LUCID_MESH_SYNC_INTERVAL":  "200ms",
	})
	client := meshapi.New(c.url, testOperator, nil)
	ctx := context.Background()
	status := func(name, id string) string {
		in, err := client.Service(ctx, name)
		if err != nil {
			return ""
		}
		return statusOf(in, id)
	}

	testenv.Eventually(t, 10*time.Second, "engine registered and passing", func() bool { return status("engine", "lucid-engine") == "passing" })
	engine.sick.Store(true)
	testenv.Eventually(t, 5*time.Second, "engine critical once its /ready fails", func() bool { return status("engine", "lucid-engine") == "critical" })
	engine.sick.Store(false)
	testenv.Eventually(t, 5*time.Second, "engine passing again", func() bool { return status("engine", "lucid-engine") == "passing" })

	// An outside service.
	outside := newFakeEngine(t)
	oh, op, _ := net.SplitHostPort(outside.Listener.Addr().String())
	opn, _ := strconv.Atoi(op)
	reg := meshapi.Registration{Name: "auth", Address: oh, Port: opn, Check: outside.URL + "/health", Interval: "200ms", Tags: []string{"phase1"}}
	if err := client.Register(ctx, reg); err != nil {
		t.Fatal(err)
	}
	outsideID := "auth-" + oh + "-" + op
	testenv.Eventually(t, 5*time.Second, "outside service passing", func() bool { return status("auth", outsideID) == "passing" })

	// Bad registrations are refused with reasons.
	for name, tc := range map[string]struct {
		reg    meshapi.Registration
		status int
	}{
		"stack name":        {meshapi.Registration{Name: "engine", Address: "10.0.0.1", Port: 1}, http.StatusConflict},
		"no address":        {meshapi.Registration{Name: "x", Port: 1}, http.StatusBadRequest},
		"bad port":          {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 70000}, http.StatusBadRequest},
		"bad check":         {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Check: "ftp://x"}, http.StatusBadRequest},
		"upper case":        {meshapi.Registration{Name: "Auth", Address: "10.0.0.1", Port: 1}, http.StatusBadRequest},
		"short check":       {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Check: "http://x/", Interval: "1ms"}, http.StatusBadRequest},
		"stack id":          {meshapi.Registration{Name: "x", ID: "lucid-engine", Address: "10.0.0.1", Port: 1}, http.StatusBadRequest},
		"path id":           {meshapi.Registration{Name: "x", ID: "x/../../agent", Address: "10.0.0.1", Port: 1}, http.StatusBadRequest},
		"meta key with dot": {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Meta: map[string]string{"a.b": "x"}}, http.StatusBadRequest},
		"consul's meta key": {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Meta: map[string]string{"consul-version": "x"}}, http.StatusBadRequest},
		"controller's key":  {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Meta: map[string]string{"managed_by": "me"}}, http.StatusBadRequest},
		"long meta value":   {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Meta: map[string]string{"k": strings.Repeat("v", 513)}}, http.StatusBadRequest},
		"refused by consul": {meshapi.Registration{Name: "x", Address: "0.0.0.0", Port: 1}, http.StatusBadRequest},
	} {
		var ae *api.Error
		if err := client.Register(ctx, tc.reg); !errors.As(err, &ae) || ae.Status != tc.status {
			t.Errorf("%s: %v, want %d", name, err, tc.status)
		}
	}
	// A refused update of the outside service keeps what it would have
	// replaced: the restart below brings it back from the store.
	bad := reg
	bad.ID, bad.Address = outsideID, "0.0.0.0"
	var refusal *api.Error
	if err := client.Register(ctx, bad); !errors.As(err, &refusal) || refusal.Status != http.StatusBadRequest {
		t.Errorf("an update Consul refuses: %v, want 400", err)
	}
	// Nothing refused was kept: the controller stays ready.
	if in, err := client.Service(ctx, "x"); err == nil {
		t.Errorf("a refused registration is listed: %v", in)
	}
	testenv.Eventually(t, 5*time.Second, "controller ready after refusals", func() bool {
		resp, err := http.Get(c.url + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// Consul forgets everything; the controller puts it back.
	agent.Restart(t)
	testenv.Eventually(t, 10*time.Second, "registrations back after a Consul restart", func() bool {
		return status("engine", "lucid-engine") == "passing" && status("auth", outsideID) == "passing"
	})

	all, err := client.Services(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Errorf("GET /services lists %d instances, want engine and auth: %+v", len(all), all)
	}

	var ae *api.Error
	if err := client.Deregister(ctx, "engine"); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Errorf("deregistering a stack service: %v, want 409", err)
	}
	if err := client.Deregister(ctx, "auth"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Service(ctx, "auth"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("auth after DELETE: %v, want 404", err)
	}
	if err := client.Deregister(ctx, "auth"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("second DELETE: %v, want 404", err)
	}

	// Shutdown deregisters the stack.
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + agent.Addr + "/v1/agent/service/lucid-engine")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("engine still registered after the controller stopped: %s", resp.Status)
	}
}

// TestServicesWithoutConsul: the registry endpoints say Consul is missing.
func TestServicesWithoutConsul(t *testing.T) {
	c := startController(t, map[string]string{"LUCID_MESH_URL": ""})
	_, err := meshapi.New(c.url, testOperator, nil).Services(context.Background())
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.Message == "" {
		t.Fatalf("GET /services without Consul = %v, want 503 saying so", err)
	}
}
