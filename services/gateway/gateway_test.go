package gateway

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
)

var secret = strings.Repeat("k", 40)

// backend records what reached it.
type backend struct {
	*httptest.Server
	mu   sync.Mutex
	last *http.Request
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" { // the gateway's active checks
			return
		}
		b.mu.Lock()
		b.last = r.Clone(context.Background())
		b.mu.Unlock()
		w.Header().Set("X-Request-ID", r.Header.Get("X-Request-ID")) // as Lucid services do
		_, _ = io.WriteString(w, "upstream:"+r.URL.Path)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

type gw struct {
	app *App
	url string
	now time.Time
	mu  sync.Mutex
}

func startGateway(t testing.TB, upstream string, env map[string]string) *gw {
	t.Helper()
	return startGatewayWith(t, upstream, env, nil)
}

// startGatewayWithRoutes starts a gateway with its own route table.
func startGatewayWithRoutes(t testing.TB, upstream string, routes []routetable.Route) *gw {
	t.Helper()
	return startGatewayWith(t, upstream, nil, routes)
}

func mustURL(t testing.TB, raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func urls(us ...*url.URL) []*url.URL { return us }

func startGatewayWith(t testing.TB, upstream string, env map[string]string, routes []routetable.Route) *gw {
	t.Helper()
	return startGatewayLogging(t, upstream, env, routes, slog.DiscardHandler)
}

// startGatewayLogging is startGatewayWith with the gateway's log going to h.
func startGatewayLogging(t testing.TB, upstream string, env map[string]string, routes []routetable.Route, h slog.Handler) *gw {
	t.Helper()
	return startGatewayOn(t, nil, upstream, env, routes, h, nil)
}

// startGatewayOn starts a gateway serving ln (nil: a fresh loopback
// port), with adjust, if any, changing the app once it is configured.
func startGatewayOn(t testing.TB, ln net.Listener, upstream string, env map[string]string, routes []routetable.Route, h slog.Handler, adjust func(*App)) *gw {
	t.Helper()
	vars := map[string]string{"JWT_SECRET_KEY": secret}
	for _, svc := range []string{"ENGINE", "ANCHORING", "BLOCKS", "DATACHAIN"} {
		vars["LUCID_"+svc+"_URL"] = upstream
	}
	vars["AUTH_SERVICE_URL"] = upstream
	for k, v := range env {
		vars[k] = v
	}
	app := New().(*App)
	r := envconfig.New(envconfig.Map(vars))
	app.Configure(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if routes != nil {
		app.routes = append([]routetable.Route(nil), routes...)
	}
	if adjust != nil {
		adjust(app)
	}
	g := &gw{app: app, now: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
	app.now = func() time.Time { g.mu.Lock(); defer g.mu.Unlock(); return g.now }
	srv := service.New(service.Config{Name: "gateway", Public: true}, slog.New(h))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	// The service's own server, with its real timeouts.
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = app.ServeOn(ctx, ln, srv) }()
	t.Cleanup(func() { cancel(); <-served; _ = app.Close() })
	g.url = "http://" + ln.Addr().String()
	return g
}

func (g *gw) advance(d time.Duration) { g.mu.Lock(); g.now = g.now.Add(d); g.mu.Unlock() }

func (g *gw) token(t testing.TB, sub string, tier auth.Tier) string {
	tok, _, err := auth.Mint([]byte(secret), auth.MintOptions{Subject: sub, Tier: tier, TTL: time.Hour, Now: g.now})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (g *gw) get(t *testing.T, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	return g.request(t, http.MethodGet, path, hdr)
}

func (g *gw) request(t *testing.T, method, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	return g.send(t, method, path, nil, false, hdr)
}

func TestTokens(t *testing.T) {
	be := newBackend(t)
	// Bad tokens count against the client's address: a budget that the
	// table's refusals do not exhaust.
	g := startGateway(t, be.URL, map[string]string{"LUCID_RATE_FREE": "10000"})
	now := g.now
	claims := func(mod func(*auth.Claims)) *auth.Claims {
		c := &auth.Claims{Tier: auth.TierPremium, RegisteredClaims: jwt.RegisteredClaims{
			Subject: "alice", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)),
		}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c *auth.Claims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	valid := sign(jwt.SigningMethodHS256, []byte(secret), claims(nil))
	parts := strings.Split(valid, ".")
	forgedPayload, _ := json.Marshal(map[string]any{"sub": "alice", "tier": "enterprise", "exp": now.Add(time.Hour).Unix()})
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString(forgedPayload) + "." + parts[2]
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	// RS256 header, HMAC signature with the shared secret as "public key".
	rsHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","typ":"JWT"}`))
	body := rsHeader + "." + parts[1]
	sig, _ := jwt.SigningMethodHS256.Sign(body, []byte(secret))
	confused := body + "." + base64.RawURLEncoding.EncodeToString(sig)

	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"valid", valid, true},
		{"expired", sign(jwt.SigningMethodHS256, []byte(secret), claims(func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(now.Add(-time.Hour)) })), false},
		{"not yet valid", sign(jwt.SigningMethodHS256, []byte(secret), claims(func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(now.Add(time.Hour)) })), false},
		{"wrong secret", sign(jwt.SigningMethodHS256, []byte(strings.Repeat("w", 40)), claims(nil)), false},
		{"alg none", none, false},
		{"alg HS512", sign(jwt.SigningMethodHS512, []byte(secret), claims(nil)), false},
		{"RS256 signed with RSA", sign(jwt.SigningMethodRS256, rsaKey, claims(nil)), false},
		{"RS256/HS256 confusion", confused, false},
		{"missing exp", sign(jwt.SigningMethodHS256, []byte(secret), claims(func(c *auth.Claims) { c.ExpiresAt = nil })), false},
		{"malformed", "not.a.jwt", false},
		{"oversized", strings.Repeat("a", 5000), false},
		{"forged tier", forged, false},
		// A header's parser would trim it to another user's subject.
		{"subject with spaces around it", sign(jwt.SigningMethodHS256, []byte(secret), claims(func(c *auth.Claims) { c.Subject = " alice " })), false},
	}
	for _, tt := range tests {
		resp, body := g.get(t, "/api/v1/blocks/1", map[string]string{"Authorization": "Bearer " + tt.token})
		if tt.ok && resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", tt.name, resp.StatusCode, body)
		}
		if !tt.ok && (resp.StatusCode != 401 || !strings.Contains(body, "LUCID_ERR_2001")) {
			t.Errorf("%s: %d %s, want 401 LUCID_ERR_2001", tt.name, resp.StatusCode, body)
		}
		if !tt.ok && strings.Contains(body, tt.token[:min(len(tt.token), 20)]) {
			t.Errorf("%s: the token is echoed", tt.name)
		}
	}
	if resp, _ := g.get(t, "/api/v1/blocks/1", nil); resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}
}

func TestProxyHeadersAndPaths(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	tok := g.token(t, "alice", auth.TierPremium)
	resp, body := g.get(t, "/blockchain/api/v1/chain", map[string]string{
		"Authorization": "Bearer " + tok, "X-Lucid-Sub": "mallory", "X-Lucid-Tier": "enterprise", "X-Request-ID": "req-123",
	})
	if resp.StatusCode != 200 || body != "upstream:/api/v1/chain" {
		t.Fatalf("strip prefix: %d %q", resp.StatusCode, body)
	}
	r := be.lastRequest()
	if r.Header.Get(HeaderSub) != "alice" || r.Header.Get(HeaderTier) != "premium" {
		t.Errorf("identity headers upstream: sub %q tier %q", r.Header.Get(HeaderSub), r.Header.Get(HeaderTier))
	}
	// The client is no trusted proxy: its X-Request-ID is replaced.
	if id := r.Header.Get("X-Request-ID"); id == "req-123" || !service.ValidRequestID(id) || r.Header.Get("X-Forwarded-For") == "" || r.Header.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("forwarding headers: %v", r.Header)
	}
	if ids := resp.Header.Values("X-Request-ID"); len(ids) != 1 || ids[0] != r.Header.Get("X-Request-ID") {
		t.Errorf("X-Request-ID on the response = %v, upstream got %q", ids, r.Header.Get("X-Request-ID"))
	}
	if resp.Header.Get("RateLimit-Limit") != "1000" {
		t.Errorf("RateLimit-Limit = %q", resp.Header.Get("RateLimit-Limit"))
	}
	if _, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok}); body != "upstream:/api/v1/anchors/x" {
		t.Errorf("kept prefix: %q", body)
	}
	// The client's token stays with the gateway, except for the auth
	// service, which issues and checks tokens.
	if a := r.Header.Get("Authorization"); a != "" {
		t.Errorf("a Lucid service got the client's token: %q", a)
	}
	g.get(t, "/auth/refresh", map[string]string{"Authorization": "Bearer " + tok})
	if a := be.lastRequest().Header.Get("Authorization"); a != "Bearer "+tok {
		t.Errorf("the auth service got Authorization %q", a)
	}
	// A token the gateway does not accept still reaches the auth service,
	// which judges it (an expired one, to refresh or log out), as an
	// anonymous request's; any other route refuses it.
	g.advance(2 * time.Hour)
	if resp, body := g.get(t, "/auth/refresh", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 200 {
		t.Errorf("an expired token to the auth service: %d %s, want it forwarded", resp.StatusCode, body)
	}
	if r := be.lastRequest(); r.Header.Get("Authorization") != "Bearer "+tok || r.Header.Get(HeaderSub) != "" {
		t.Errorf("the auth service got Authorization %q and %s %q for an expired token", r.Header.Get("Authorization"), HeaderSub, r.Header.Get(HeaderSub))
	}
	if resp, _ := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 401 {
		t.Errorf("an expired token to a Lucid service: %d, want 401", resp.StatusCode)
	}
	// A public route without a token still strips forged identity, and
	// any header whose name has an underscore (a CGI-style upstream
	// reads X_Lucid_Sub as X-Lucid-Sub).
	g.get(t, "/auth/login", map[string]string{"X-Lucid-Sub": "mallory", "X_Lucid_Sub": "mallory", "X-Client_Note": "x"})
	for k, v := range be.lastRequest().Header {
		if k == HeaderSub || strings.Contains(k, "_") {
			t.Errorf("a forged %s: %q reached the upstream", k, v)
		}
	}
	if resp, _ := g.get(t, "/nowhere", nil); resp.StatusCode != 404 {
		t.Errorf("unrouted path: %d", resp.StatusCode)
	}
	// A stripped route does not reach a service's readiness and metrics:
	// the operator's, not a user's. Its bare liveness it may.
	tok = g.token(t, "alice", auth.TierPremium) // the clock moved past the first
	for _, p := range []string{"/blockchain/metrics", "/blockchain/ready", "/blockchain/metrics/x", "/blockchain/%6Detrics"} {
		if resp, body := g.get(t, p, map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 404 {
			t.Errorf("%s: %d %s, want 404", p, resp.StatusCode, body)
		}
	}
	for _, p := range []string{"/blockchain/metricsx", "/blockchain/health"} {
		if resp, body := g.get(t, p, map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 200 {
			t.Errorf("%s: %d %s, want it proxied", p, resp.StatusCode, body)
		}
	}
}

func TestRateLimitsPerTier(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"LUCID_RATE_FREE": "60", "LUCID_RATE_PREMIUM": "600"})
	count := func(hdr map[string]string, n int) (allowed int, last *http.Response) {
		for i := 0; i < n; i++ {
			resp, _ := g.get(t, "/auth/x", hdr)
			if resp.StatusCode == 200 {
				allowed++
			}
			last = resp
		}
		return allowed, last
	}
	// Anonymous: the free tier by IP, burst 6 + 1 at one instant.
	allowed, last := count(nil, 20)
	if allowed != 7 || last.StatusCode != 429 || last.Header.Get("Retry-After") != "1" || last.Header.Get("RateLimit-Remaining") != "0" {
		t.Errorf("free: %d allowed, last %d retry-after %q", allowed, last.StatusCode, last.Header.Get("Retry-After"))
	}
	// A minute later the budget is back.
	g.advance(time.Minute)
	if allowed, _ := count(nil, 1); allowed != 1 {
		t.Error("budget not restored after a minute")
	}
	// Premium by sub: its own budget, 60 + 1.
	tok := g.token(t, "bob", auth.TierPremium)
	if allowed, _ := count(map[string]string{"Authorization": "Bearer " + tok}, 100); allowed != 61 {
		t.Errorf("premium: %d allowed, want 61", allowed)
	}
	// Preflights are never counted.
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest(http.MethodOptions, g.url+"/auth/x", nil)
		req.Header.Set("Access-Control-Request-Method", "GET")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 204 {
			t.Fatalf("preflight %d: %d", i, resp.StatusCode)
		}
	}
}

func TestUpstreamDown(t *testing.T) {
	g := startGateway(t, "http://127.0.0.1:1", nil)
	resp, body := g.get(t, "/auth/x", nil)
	if resp.StatusCode != 502 || !strings.Contains(body, CodeUpstream) || strings.Contains(body, "127.0.0.1:1") {
		t.Errorf("upstream down: %d %s", resp.StatusCode, body)
	}
}

// TestTwoGatewaysShareARedisBudget: with REDIS_URL, two gateways count
// against one budget; with Redis gone the closed policy refuses requests
// (the default is TestRedisDiesLimitsHold's).
func TestTwoGatewaysShareARedisBudget(t *testing.T) {
	addr := testenv.StartRedis(t)
	be := newBackend(t)
	env := map[string]string{"REDIS_URL": "redis://" + addr + "/0", "LUCID_RATE_FREE": "60"}
	g1, g2 := startGateway(t, be.URL, env), startGateway(t, be.URL, env)
	// Both clocks stand at one instant (startGatewayOn) and neither moves.
	allowed := 0
	for i := 0; i < 30; i++ {
		g := g1
		if i%2 == 1 {
			g = g2
		}
		if resp, _ := g.get(t, "/auth/x", nil); resp.StatusCode == 200 {
			allowed++
		}
	}
	if allowed != 7 {
		t.Errorf("two gateways allowed %d, want 7 (burst 6 + 1 of one shared budget)", allowed)
	}
	closed := startGateway(t, be.URL, map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0", "LUCID_RATE_LIMIT_ON_ERROR": "closed"})
	if resp, body := closed.get(t, "/auth/x", nil); resp.StatusCode != 503 || !strings.Contains(body, "unavailable") {
		t.Errorf("closed policy with Redis down: %d %s", resp.StatusCode, body)
	}
}

// The gateway collects garbage at its own target unless the operator set
// GOGC, which the runtime has applied already.
func TestGCTarget(t *testing.T) {
	restore := debug.SetGCPercent(100)
	defer debug.SetGCPercent(restore)
	be := newBackend(t)
	startGateway(t, be.URL, nil)
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Errorf("GC percent %d without GOGC, want %d", got, defaultGCPercent)
	}
	startGateway(t, be.URL, map[string]string{"GOGC": "150"})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GC percent %d with GOGC set, want it left alone", got)
	}
}

// TestRequestIDKeptOnlyFromATrustedProxy: a trusted proxy's X-Request-ID
// goes on, upstream and back, on proxied requests and on the gateway's
// own endpoints alike; anyone else's is replaced, so that no client can
// give its requests another request's ID in the logs.
func TestRequestIDKeptOnlyFromATrustedProxy(t *testing.T) {
	be := newBackend(t)
	for _, tc := range []struct {
		name    string
		trusted string
		kept    bool
	}{
		{"no trusted proxy", "", false},
		{"another address trusted", "192.0.2.1", false},
		{"the client a trusted proxy", "127.0.0.1", true},
	} {
		env := map[string]string{}
		if tc.trusted != "" {
			env["LUCID_TRUSTED_PROXIES"] = tc.trusted
		}
		g := startGateway(t, be.URL, env)
		tok := g.token(t, "alice", auth.TierPremium)
		resp, _ := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok, "X-Request-ID": "edge-42"})
		up := be.lastRequest().Header.Get("X-Request-ID")
		if back := resp.Header.Get("X-Request-ID"); (up == "edge-42") != tc.kept || back != up {
			t.Errorf("%s: upstream got %q, the client %q; kept should be %v", tc.name, up, back, tc.kept)
		}
		for _, path := range []string{"/health", "/nowhere"} {
			resp, body := g.get(t, path, map[string]string{"X-Request-ID": "edge-43"})
			if got := resp.Header.Get("X-Request-ID"); (got == "edge-43") != tc.kept || !service.ValidRequestID(got) {
				t.Errorf("%s: %s answered X-Request-ID %q; kept should be %v", tc.name, path, got, tc.kept)
			}
			if path == "/nowhere" && strings.Contains(body, "edge-43") != tc.kept {
				t.Errorf("%s: the 404's body %s", tc.name, body)
			}
		}
		// Refused before package service's handlers see it: a body of
		// unknown length to /health.
		req, _ := http.NewRequest(http.MethodPost, g.url+"/health", io.MultiReader(strings.NewReader("x")))
		req.Header.Set("X-Request-ID", "edge-44")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Request-ID"); resp.StatusCode != http.StatusRequestEntityTooLarge || (got == "edge-44") != tc.kept {
			t.Errorf("%s: a refused own request: %d, X-Request-ID %q; kept should be %v", tc.name, resp.StatusCode, got, tc.kept)
		}
	}
}
