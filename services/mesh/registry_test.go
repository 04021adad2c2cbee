package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
)

// fakeEngine answers /ready, or fails it when sick, with sickBody in the
// answer: what Consul would put in the check's output.
type fakeEngine struct {
	*httptest.Server
	sick atomic.Bool
}

const sickBody = "internal-detail-that-must-not-travel"

func newFakeEngine(t *testing.T) *fakeEngine {
	f := &fakeEngine{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.sick.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(sickBody))
		}
	}))
	t.Cleanup(f.Close)
	return f
}

// startRegistrar starts a controller that registers engine, in plain
// HTTP (the fake engine speaks no mTLS), with agent, checking and syncing
// every 200 ms.
func startRegistrar(t *testing.T, agent *testenv.ConsulAgent, engine *fakeEngine) *controller {
	t.Helper()
	host, port, _ := net.SplitHostPort(agent.Addr)
	return startController(t, map[string]string{
		"LUCID_MESH_URL":            "",
		"CONSUL_HOST":               host,
		"CONSUL_PORT":               port,
		"CONSUL_HTTP_TOKEN":         testManagement,
		"LUCID_ENGINE_URL":          engine.URL,
		"LUCID_MESH_CHECK_INTERVAL": "200ms",
		"LUCID_MESH_SYNC_INTERVAL":  "200ms",
	})
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
	agent := startACLConsul(t)
	engine := newFakeEngine(t)
	c := startRegistrar(t, agent, engine)
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
	// Consul's check output holds the answer it fetched; the controller
	// hands back the status only.
	testenv.Eventually(t, 5*time.Second, "consul's check output holds the answer", func() bool {
		return strings.Contains(getAs(t, "http://"+agent.Addr+"/v1/health/checks/engine", testManagement), sickBody)
	})
	for _, path := range []string{"/services", "/services/engine"} {
		if body := getAs(t, c.url+path, testOperator); strings.Contains(body, sickBody) || strings.Contains(body, `"output"`) {
			t.Errorf("GET %s passes a check's output on: %s", path, body)
		}
	}
	// A name that is not a service's never reaches Consul: decoded, it
	// would be a path of the caller's choosing, asked with the
	// controller's management token.
	for _, name := range []string{"..%2F..%2Fagent%2Fself", "engine%2F..%2F..%2Fkv%2Fx", "Engine"} {
		req, _ := http.NewRequest(http.MethodGet, c.url+"/services/"+name, nil)
		req.Header.Set("Authorization", "Bearer "+testOperator)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /services/%s: %d %s, want 400", name, resp.StatusCode, b)
		}
	}
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
		"short check":       {meshapi.Registration{Name: "x", Address: "10.0.0.1", Port: 1, Check: "http://10.0.0.1:1/", Interval: "1ms"}, http.StatusBadRequest},
		"check elsewhere":   {meshapi.Registration{Name: "x", Address: oh, Port: opn, Check: "http://" + agent.Addr + "/v1/agent/self"}, http.StatusBadRequest},
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
	req, _ := http.NewRequest(http.MethodGet, "http://"+agent.Addr+"/v1/agent/service/lucid-engine", nil)
	req.Header.Set("X-Consul-Token", testManagement)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("engine still registered after the controller stopped: %s", resp.Status)
	}
}

// TestReadyWaitsForConsulsCatalog, against a real Consul agent: an agent
// whose copy of its state to the catalog failed keeps its checks' results
// to itself for 15 to 30 seconds, and the catalog, which the gateway
// reads, shows the old ones. The controller is not ready while the
// catalog lags behind, and says why.
func TestReadyWaitsForConsulsCatalog(t *testing.T) {
	// ACLs as on a Pi, but the agent's token is not kept on disk: the test
	// changes it below.
	agent := testenv.StartConsulAgentWithConfig(t, []byte(`{"acl":{"enabled":true,"default_policy":"deny",`+
		`"tokens":{"initial_management":"`+testManagement+`","agent":"`+testManagement+`"}}}`))
	engine := newFakeEngine(t)
	c := startRegistrar(t, agent, engine)
	ready := func() (int, string) {
		resp, err := http.Get(c.url + "/ready")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	catalogSays := func() string {
		return getAs(t, "http://"+agent.Addr+"/v1/health/checks/engine", testManagement)
	}
	testenv.Eventually(t, 10*time.Second, "the engine passing in the catalog", func() bool { return strings.Contains(catalogSays(), `"passing"`) })

	// The agent's copy of its state to the catalog fails, as it may at
	// boot: it copies nothing more for 15 to 30 seconds.
	agent.BreakCatalogCopy(t)

	// The engine fails its checks: the agent knows, the catalog does not.
	engine.sick.Store(true)
	var body string
	testenv.Eventually(t, 10*time.Second, "the controller unready while the catalog lags behind", func() bool {
		var code int
		code, body = ready()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "catalog lags behind its agent on 1 of the 1 registrations")
	})
	if !strings.Contains(catalogSays(), `"passing"`) {
		t.Fatalf("the catalog followed the agent after all: %s", catalogSays())
	}
	if strings.Contains(body, "lucid-engine") {
		t.Errorf("/ready names a registration: %s", body)
	}
	// The agent's token back: it copies its state at once.
	agent.MendCatalogCopy(t)
	testenv.Eventually(t, 10*time.Second, "the controller ready once the catalog has caught up", func() bool {
		code, _ := ready()
		return code == http.StatusOK
	})
	if !strings.Contains(catalogSays(), `"critical"`) {
		t.Errorf("the catalog did not catch up: %s", catalogSays())
	}
}

// getAs GETs url with token as the bearer and returns the body.
func getAs(t *testing.T, url, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
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

// TestCheckTarget: an outside registration's check must point at the
// registered address and port, over http or https.
func TestCheckTarget(t *testing.T) {
	for _, tc := range []struct {
		check, address string
		port           int
		ok             bool
	}{
		{"http://10.0.0.1:8080/health", "10.0.0.1", 8080, true},
		{"https://10.0.0.1:8443/health?full=1", "10.0.0.1", 8443, true},
		{"http://auth.internal/health", "auth.internal", 80, true},
		{"https://Auth.Internal/health", "auth.internal", 443, true},
		{"http://[fd00::1]:9000/", "fd00::1", 9000, true},
		{"http://10.0.0.1/health", "10.0.0.1", 8080, false},                 // port 80, not 8080
		{"https://10.0.0.1/health", "10.0.0.1", 80, false},                  // 443
		{"http://169.254.169.254/latest/meta-data/", "10.0.0.1", 80, false}, // another host
		{"http://127.0.0.1:8500/v1/agent/self", "10.0.0.1", 8500, false},    // Consul's own API
		{"http://10.0.0.1.evil.example:80/", "10.0.0.1", 80, false},         // a name that starts like it
		{"http://user:pw@10.0.0.1:80/", "10.0.0.1", 80, false},              // credentials
		{"ftp://10.0.0.1:21/", "10.0.0.1", 21, false},                       // scheme
		{"http:10.0.0.1:80", "10.0.0.1", 80, false},                         // opaque
		{"//10.0.0.1:80/", "10.0.0.1", 80, false},                           // no scheme
		{"http://10.0.0.1:80@169.254.169.254/", "10.0.0.1", 80, false},      // userinfo trick
		{"http://10.0.0.1%2f@169.254.169.254:80/", "10.0.0.1", 80, false},   // escaped userinfo
		{"http://[fd00::1]:9000/", "fd00::2", 9000, false},                  // another IPv6 host
		{"http://10.0.0.1:08080/", "10.0.0.1", 8080, false},                 // a port spelled otherwise
	} {
		err := checkTarget(tc.check, tc.address, tc.port)
		if (err == nil) != tc.ok {
			t.Errorf("checkTarget(%q, %s:%d) = %v, want ok=%v", tc.check, tc.address, tc.port, err, tc.ok)
		}
		reg := meshapi.Registration{Name: "auth", Address: tc.address, Port: tc.port, Check: tc.check}
		if err := validateRegistration(&reg); (err == nil) != tc.ok {
			t.Errorf("registration with check %q on %s:%d: %v, want ok=%v", tc.check, tc.address, tc.port, err, tc.ok)
		}
	}
	for _, addr := range []string{"10.0.0.1", "fd00::1", "auth", "auth.internal", "lucid_auth_1"} {
		if !validAddress(addr) {
			t.Errorf("address %q refused", addr)
		}
	}
	for _, addr := range []string{"", "a b", "a/b", "a@b", "a#b", "a:80", "a?b", strings.Repeat("a", 64) + ".b"} {
		if validAddress(addr) {
			t.Errorf("address %q accepted", addr)
		}
	}
}

// TestStoredForeignChecksAreDropped: an outside registration stored (and
// given to Consul) before check URLs had to point at the registration
// loses its check when the controller starts, in its store and in Consul.
func TestStoredForeignChecksAreDropped(t *testing.T) {
	agent := testenv.StartConsulAgent(t)
	cfg := consul.DefaultConfig()
	cfg.Address = agent.Addr
	client, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := meshapi.Registration{Name: "auth", ID: "auth-old", Address: "10.0.0.1", Port: 80, Check: "http://" + agent.Addr + "/v1/agent/self", Interval: "1s"}
	if err := client.Agent().ServiceRegister(externalRegistration(old)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "mesh.db")
	g, err := openRegistrar(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(old)
	if err := g.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(externalBucket).Put([]byte(old.ID), data) }); err != nil {
		t.Fatal(err)
	}
	closeRegistrar(t, g)

	log := &testenv.SyncBuffer{}
	g, err = openRegistrar(path, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer closeRegistrar(t, g)
	stored, err := g.external()
	if err != nil || len(stored) != 1 || stored[0].Check != "" || stored[0].Address != old.Address {
		t.Fatalf("stored after reopening: %+v %v, want the registration without its check", stored, err)
	}
	if !strings.Contains(log.String(), "the check is dropped") || strings.Contains(log.String(), agent.Addr) {
		t.Errorf("log: %s", log.String())
	}
	g.consul = client
	g.sync(context.Background())
	checks, err := client.Agent().ChecksWithFilter(`ServiceID == "auth-old"`)
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 0 {
		t.Errorf("consul still runs the old check: %v", checks)
	}
	if svc, _, err := client.Agent().Service("auth-old", nil); err != nil || svc.Address != old.Address {
		t.Errorf("the registration itself: %v %v", svc, err)
	}
}

// closeRegistrar closes g and reports a failure: its database was written.
func closeRegistrar(t *testing.T, g *registrar) {
	t.Helper()
	if err := g.close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// TestLagBehind: a registration lags when the catalog's node lacks it or
// shows one of its checks with another status than the agent's; checks of
// other services, and the node's own, do not count.
func TestLagBehind(t *testing.T) {
	want := []*consul.AgentServiceRegistration{{ID: "lucid-engine"}, {ID: "lucid-blocks"}, {ID: "auth-1"}}
	local := map[string]*consul.AgentCheck{
		"lucid-engine-ready": {CheckID: "lucid-engine-ready", ServiceID: "lucid-engine", Status: consul.HealthPassing},
		"lucid-blocks-ready": {CheckID: "lucid-blocks-ready", ServiceID: "lucid-blocks", Status: consul.HealthCritical},
		"other":              {CheckID: "other", ServiceID: "someone-else", Status: consul.HealthPassing},
		"_node_maintenance":  {CheckID: "_node_maintenance", Status: consul.HealthCritical},
	}
	node := &consul.CatalogNode{Services: map[string]*consul.AgentService{"lucid-engine": {}, "lucid-blocks": {}}}
	checks := consul.HealthChecks{
		{CheckID: "lucid-engine-ready", ServiceID: "lucid-engine", Status: consul.HealthCritical}, // not copied yet
		{CheckID: "lucid-blocks-ready", ServiceID: "lucid-blocks", Status: consul.HealthCritical},
	}
	if got := lagBehind(want, local, node, checks); !slices.Equal(got, []string{"lucid-engine", "auth-1"}) {
		t.Errorf("lagging %v, want the engine (its check) and auth-1 (missing)", got)
	}
	checks[0].Status = consul.HealthPassing
	node.Services["auth-1"] = &consul.AgentService{}
	if got := lagBehind(want, local, node, checks); len(got) != 0 {
		t.Errorf("level, yet lagging %v", got)
	}
	if got := lagBehind(want, local, nil, checks); len(got) != 3 {
		t.Errorf("no node in the catalog: lagging %v, want all three", got)
	}
}

// TestCatalogUnreadIsSaid: a catalog that cannot be read for
// lagWarnAfter in a row is said once at warn level, with the error and
// that /ready keeps its last verdict, and once more when it is read
// again; a short spell stays at debug level.
func TestCatalogUnreadIsSaid(t *testing.T) {
	var log bytes.Buffer
	g := &registrar{logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	start := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	noLeader := errors.New("Unexpected response code: 500 (No cluster leader)")
	g.noteRead(noLeader, start)
	g.noteRead(noLeader, start.Add(lagWarnAfter/2))
	g.noteRead(nil, start.Add(lagWarnAfter))
	if log.Len() != 0 {
		t.Fatalf("a short spell unread was logged: %s", log.String())
	}
	g.noteRead(noLeader, start.Add(time.Minute))
	g.noteRead(noLeader, start.Add(time.Minute+lagWarnAfter-time.Second))
	if log.Len() != 0 {
		t.Fatalf("logged before lagWarnAfter: %s", log.String())
	}
	for i := range 3 {
		g.noteRead(noLeader, start.Add(time.Minute+lagWarnAfter+time.Duration(i)*time.Second))
	}
	if got := log.String(); strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "No cluster leader") ||
		!strings.Contains(got, "/ready keeps the verdict of its last read") || !strings.Contains(got, "for=10s") {
		t.Fatalf("after lagWarnAfter unread: %s", got)
	}
	log.Reset()
	g.noteRead(nil, start.Add(2*time.Minute))
	if got := log.String(); !strings.Contains(got, "level=INFO") || !strings.Contains(got, "can be read again") || !strings.Contains(got, "after=1m0s") {
		t.Fatalf("read again: %s", got)
	}
}
