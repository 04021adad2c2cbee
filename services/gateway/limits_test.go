package gateway

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// TestClientKeyIPv6By64: an anonymous IPv6 client is keyed by its /64, so
// rotating addresses inside it gains nothing; IPv4 by address, and an
// IPv4-mapped address as the IPv4 one. Behind a trusted proxy the same
// holds for the address X-Forwarded-For names.
func TestClientKeyIPv6By64(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"LUCID_TRUSTED_PROXIES": "127.0.0.1,2001:db8:ffff::/48"})
	for _, tc := range []struct{ remote, xff, want string }{
		{"203.0.113.7:1234", "", "ip:203.0.113.7"},
		{"[::ffff:203.0.113.7]:1234", "", "ip:203.0.113.7"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1234", "", "ip:2001:db8:1:2::/64"},
		{"[2001:db8:1:2::1]:1234", "", "ip:2001:db8:1:2::/64"},
		{"[2001:db8:1:3::1]:1234", "", "ip:2001:db8:1:3::/64"},
		{"[fe80::1%eth0]:1234", "", "ip:fe80::/64"},
		// Through a trusted proxy: the client's own address, keyed alike.
		{"127.0.0.1:1234", "2001:db8:7:8:1:2:3:4", "ip:2001:db8:7:8::/64"},
		{"127.0.0.1:1234", "::ffff:198.51.100.4", "ip:198.51.100.4"},
		{"[2001:db8:ffff::1]:1234", "198.51.100.4, 2001:db8:ffff::2", "ip:198.51.100.4"},
		// An untrusted peer's X-Forwarded-For is ignored.
		{"[2001:db8:1:2::1]:1234", "198.51.100.4", "ip:2001:db8:1:2::/64"},
	} {
		hdr := map[string]string{}
		if tc.xff != "" {
			hdr["X-Forwarded-For"] = tc.xff
		}
		if got := g.app.clientKey(fastRequest(t, http.MethodGet, tc.remote, hdr, "")); got != tc.want {
			t.Errorf("peer %s, X-Forwarded-For %q: key %q, want %q", tc.remote, tc.xff, got, tc.want)
		}
	}
}

// TestIPv6RotationSharesABudget: through a trusted proxy, anonymous
// requests from ever new addresses of one /64 draw on one budget; another
// /64 has its own.
func TestIPv6RotationSharesABudget(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"LUCID_TRUSTED_PROXIES": "127.0.0.1", "LUCID_RATE_FREE": "60"})
	allowed := 0
	for i := range 20 {
		xff := "2001:db8:5:6:" + hex4(i) + "::1"
		if resp, _ := g.get(t, "/auth/x", map[string]string{"X-Forwarded-For": xff}); resp.StatusCode == 200 {
			allowed++
		}
	}
	if allowed != 7 {
		t.Errorf("20 addresses of one /64: %d allowed, want 7 (burst 6 + 1 of one budget)", allowed)
	}
	if resp, _ := g.get(t, "/auth/x", map[string]string{"X-Forwarded-For": "2001:db8:5:7::1"}); resp.StatusCode != 200 {
		t.Errorf("another /64: %d, want its own budget", resp.StatusCode)
	}
}

func hex4(i int) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[i>>12&15], digits[i>>8&15], digits[i>>4&15], digits[i&15]})
}

// scrape returns the value of each sample on the gateway's /metrics, by
// its line's name and labels ("name{labels}").
func (g *gw) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	_, body := g.get(t, "/metrics", nil)
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// anonymous sends n anonymous requests and returns how many were answered
// 200, failing on any answer but 200 and 429.
func (g *gw) anonymous(t *testing.T, n int) int {
	t.Helper()
	allowed := 0
	for range n {
		resp, body := g.get(t, "/auth/x", nil)
		switch resp.StatusCode {
		case 200:
			allowed++
		case 429:
		default:
			t.Fatalf("anonymous request: %d %s", resp.StatusCode, body)
		}
	}
	return allowed
}

// TestRedisDiesLimitsHold: two gateways share a Redis budget; with that
// Redis killed, each still limits, from its own budget, says so once in its
// log and in its metrics, and never lets traffic through unlimited; with
// Redis back, decisions return to it.
func TestRedisDiesLimitsHold(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	be := newBackend(t)
	env := map[string]string{"REDIS_URL": "redis://" + srv.Addr + "/0", "LUCID_RATE_FREE": "60"}
	var log testenv.SyncBuffer
	g1 := startGatewayLogging(t, be.URL, env, nil, slog.NewJSONHandler(&log, nil))
	g2 := startGateway(t, be.URL, env)
	g2.app.now = g1.app.now // one clock
	if n := g1.anonymous(t, 10) + g2.anonymous(t, 10); n != 7 {
		t.Fatalf("Redis up: two gateways allowed %d, want 7 (burst 6 + 1 of one shared budget)", n)
	}

	srv.Stop()
	if n := g1.anonymous(t, 20); n != 7 {
		t.Errorf("Redis dead: %d of 20 allowed, want 7 from the gateway's own budget", n)
	}
	m := g1.scrape(t)
	if m["lucid_gateway_ratelimit_fallback_active"] != 1 || m["lucid_gateway_ratelimit_fallback_decisions_total"] < 20 {
		t.Errorf("Redis dead: fallback active %v, %v fallback decisions", m["lucid_gateway_ratelimit_fallback_active"], m["lucid_gateway_ratelimit_fallback_decisions_total"])
	}
	if n := strings.Count(log.String(), "Redis cannot decide"); n != 1 {
		t.Errorf("the fallback was logged %d times, want once:\n%s", n, log.String())
	}

	srv.Start(t)
	g1.advance(time.Minute) // a whole budget again, wherever it is kept
	testenv.Eventually(t, 10*time.Second, "decisions back on Redis", func() bool {
		g1.advance(time.Second) // each scrape counts against this address's budget too
		g1.anonymous(t, 1)
		return g1.scrape(t)["lucid_gateway_ratelimit_fallback_active"] == 0
	})
	g1.advance(time.Minute)
	// Shared again: what g1 allows, g2 does not get twice.
	if n := g1.anonymous(t, 10) + g2.anonymous(t, 10); n != 7 {
		t.Errorf("Redis back: two gateways allowed %d, want 7 of one shared budget", n)
	}
	if n := strings.Count(log.String(), "Redis answers again"); n != 1 {
		t.Errorf("the return was logged %d times, want once", n)
	}
}

// TestRateLimitOnErrorSetting: local is the default, closed refuses, the
// retired open is read as local with a warning at start, and anything
// else is a configuration error naming the choices.
func TestRateLimitOnErrorSetting(t *testing.T) {
	be := newBackend(t)
	dead := "redis://127.0.0.1:1/0"
	for _, v := range []string{"", "local", "open", "OPEN"} {
		var log testenv.SyncBuffer
		g := startGatewayLogging(t, be.URL, map[string]string{"REDIS_URL": dead, "LUCID_RATE_FREE": "60", envOnError: v}, nil, slog.NewJSONHandler(&log, nil))
		if n := g.anonymous(t, 20); n != 7 {
			t.Errorf("%s=%q with Redis down: %d of 20 allowed, want 7", envOnError, v, n)
		}
		if warned := strings.Contains(log.String(), "open is retired"); warned != strings.EqualFold(v, "open") {
			t.Errorf("%s=%q: warned at start %v", envOnError, v, warned)
		}
	}
	r := envconfig.New(envconfig.Map(map[string]string{"JWT_SECRET_KEY": secret, envOnError: "lax"}))
	New().Configure(r)
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), envOnError) || !strings.Contains(err.Error(), "local, closed") {
		t.Errorf("%s=lax: %v, want an error naming local and closed", envOnError, err)
	}
}

// send makes one request with body (nil: none; chunked: no length) and
// returns the answer with its body read.
func (g *gw) send(t *testing.T, method, path string, body []byte, chunked bool, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
		if chunked {
			rd = io.MultiReader(rd) // hides the length: sent chunked
		}
	}
	req, _ := http.NewRequest(method, g.url+path, rd)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestBodiesCostUnits: a request costs one unit per started upload unit of
// body, at least one (its first upload unit comes with it), from
// Content-Length before it is forwarded, or for a body without a length
// from the bytes that passed, charged afterwards so the next request
// waits; more than the burst is taken up front only up to the burst, the
// rest afterwards. A read costs one.
func TestBodiesCostUnits(t *testing.T) {
	var received atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		received.Add(n)
	}))
	defer up.Close()
	// Free: 60 a minute (a unit a second), burst 6, so 7 units at once.
	g := startGateway(t, up.URL, map[string]string{"LUCID_RATE_FREE": "60", "LUCID_RATE_UPLOAD_UNIT_BYTES": "1024"})
	tok := map[string]string{"Authorization": "Bearer " + g.token(t, "alice", "free")}
	kib := func(n int) []byte { return bytes.Repeat([]byte("x"), n*1024) }
	type step struct {
		name       string
		method     string
		body       []byte
		chunked    bool
		status     int
		remaining  string
		retryAfter string
	}
	for _, s := range []step{
		{"a read (fast path) costs 1", http.MethodGet, nil, false, 200, "6", ""},
		{"2 KiB with a length costs 2", http.MethodPost, kib(2), false, 200, "4", ""},
		{"5 KiB costs 5: 4 left, refused", http.MethodPost, kib(5), false, 429, "0", "1"},
		{"2 KiB + 1 byte without a length: 1 now", http.MethodPost, append(kib(2), 'x'), true, 200, "3", ""},
		// ... and 2 afterwards: one left.
		{"a read takes the last", http.MethodGet, nil, false, 200, "0", ""},
		{"the next read waits", http.MethodGet, nil, false, 429, "0", "1"},
	} {
		resp, body := g.send(t, s.method, "/api/v1/chunks/x", s.body, s.chunked, tok)
		if resp.StatusCode != s.status || resp.Header.Get("RateLimit-Remaining") != s.remaining || resp.Header.Get("Retry-After") != s.retryAfter {
			t.Errorf("%s: %d, remaining %q, retry after %q; want %d, %q, %q (%s)", s.name, resp.StatusCode,
				resp.Header.Get("RateLimit-Remaining"), resp.Header.Get("Retry-After"), s.status, s.remaining, s.retryAfter, body)
		}
		if s.status == 429 && s.body != nil && !strings.Contains(body, "counts it as 5") {
			t.Errorf("%s: %s", s.name, body)
		}
	}
	if m := g.scrape(t)[`lucid_gateway_ratelimit_body_units_total{tier="free"}`]; m != 3 {
		t.Errorf("body units metric %v, want 3 (1 up front, 2 afterwards)", m)
	}

	// 20 KiB costs 20: 7 (a whole budget) up front, 13 afterwards.
	g.advance(time.Minute)
	if resp, body := g.send(t, http.MethodPost, "/api/v1/chunks/x", kib(20), false, tok); resp.StatusCode != 200 {
		t.Fatalf("20 KiB on a whole budget: %d %s", resp.StatusCode, body)
	}
	if resp, _ := g.send(t, http.MethodGet, "/api/v1/chunks/x", nil, false, tok); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "14" {
		t.Errorf("after 20 KiB: %d, retry after %q; want 429 for 14 s", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if received.Load() != int64(2*1024+2*1024+1+20*1024) {
		t.Errorf("the upstream received %d bytes", received.Load())
	}
}

// TestDefaultUploadUnitFitsTheLargestChunk: with the defaults, a 16 MiB
// chunk (the data chain's largest) fits the free tier's burst in one
// decision, and a 1 MiB chunk costs what any request does.
func TestDefaultUploadUnitFitsTheLargestChunk(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	b := g.app.budgets["free"]
	for _, tc := range []struct {
		size      int64
		now, rest int
	}{{16 << 20, 8, 0}, {1 << 20, 1, 0}, {100, 1, 0}, {3 << 20, 2, 0}, {64 << 20, 11, 21}} {
		fc := fastRequest(t, http.MethodPost, "127.0.0.1:1", nil, "")
		fc.Request.Header.SetContentLength(int(tc.size))
		now, rest, counted := g.app.requestCost(fc, b)
		if now != tc.now || rest != tc.rest || counted {
			t.Errorf("%d bytes: %d now, %d later (counted %v); want %d, %d", tc.size, now, rest, counted, tc.now, tc.rest)
		}
		if now > b.limit.MaxCost() {
			t.Errorf("%d bytes: %d up front is more than one decision can take (%d)", tc.size, now, b.limit.MaxCost())
		}
	}
}

// holding is an upstream whose /hold requests wait until released (or
// their client leaves), and whose /cut requests break off mid-answer.
type holding struct {
	*httptest.Server
	held    atomic.Int64
	release chan struct{}
}

func newHolding(t *testing.T) *holding {
	h := &holding{release: make(chan struct{})}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch {
		case strings.HasSuffix(r.URL.Path, "/hold"):
			h.held.Add(1)
			defer h.held.Add(-1)
			_, _ = io.WriteString(w, "first event\n")
			w.(http.Flusher).Flush() // a stream: under way, more to come
			select {
			case <-h.release:
			case <-r.Context().Done():
			}
		case strings.HasSuffix(r.URL.Path, "/cut"):
			w.Header().Set("Content-Length", "100")
			_, _ = io.WriteString(w, "part")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	}))
	t.Cleanup(h.Close)
	return h
}

// TestConcurrencyPerPrincipal: on both proxy paths, a principal has at
// most its tier's requests in progress; one more gets 429 with Retry-After
// while others are served; a slot comes back when a request ends, however
// it ends (a client leaving, a handler panicking on a broken upstream).
func TestConcurrencyPerPrincipal(t *testing.T) {
	for _, pp := range proxyPaths {
		t.Run(pp.name, func(t *testing.T) {
			up := newHolding(t)
			g := startGateway(t, up.URL, map[string]string{"LUCID_CONCURRENCY_FREE": "2", "LUCID_CONCURRENCY_PREMIUM": "3", "LUCID_RATE_FREE": "10000"})
			alice := map[string]string{"Authorization": "Bearer " + g.token(t, "alice", "free")}
			bob := map[string]string{"Authorization": "Bearer " + g.token(t, "bob", "premium")}
			var body []byte
			if pp.method == http.MethodPost {
				body = []byte("{}")
			}
			// hold starts a request that waits upstream; cancel ends it
			// from the client's side.
			hold := func(hdr map[string]string) (end func()) {
				ctx, cancel := context.WithCancel(context.Background())
				var rd io.Reader
				if body != nil {
					rd = bytes.NewReader(body)
				}
				req, _ := http.NewRequestWithContext(ctx, pp.method, g.url+"/api/v1/anchors/hold", rd)
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != 200 {
					t.Fatalf("held request: %d", resp.StatusCode)
				}
				return func() { cancel(); resp.Body.Close() }
			}
			c1, c2 := hold(alice), hold(alice)
			resp, msg := g.send(t, pp.method, "/api/v1/anchors/x", body, false, alice)
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(msg, service.CodeRateLimit) || !strings.Contains(msg, "more than 2 requests at once") {
				t.Errorf("alice's third request: %d, retry after %q, %s", resp.StatusCode, resp.Header.Get("Retry-After"), msg)
			}
			if resp, _ := g.send(t, pp.method, "/api/v1/anchors/x", body, false, bob); resp.StatusCode != 200 {
				t.Errorf("bob, while alice is at her limit: %d", resp.StatusCode)
			}
			m := g.scrape(t)
			if m[`lucid_gateway_requests_in_progress{tier="free"}`] != 2 || m[`lucid_gateway_concurrency_limited_total{tier="free"}`] != 1 {
				t.Errorf("metrics: in progress %v, limited %v", m[`lucid_gateway_requests_in_progress{tier="free"}`], m[`lucid_gateway_concurrency_limited_total{tier="free"}`])
			}
			// A client that leaves gives its slot back.
			c1()
			testenv.Eventually(t, 5*time.Second, "the slot of a departed client back", func() bool {
				resp, _ := g.send(t, pp.method, "/api/v1/anchors/x", body, false, alice)
				return resp.StatusCode == 200
			})
			// So does a request whose handler panics (the upstream broke
			// off its answer): many more than the limit, one after another.
			for range 5 {
				req, _ := http.NewRequest(pp.method, g.url+"/api/v1/anchors/cut", bytes.NewReader(body))
				for k, v := range alice {
					req.Header.Set(k, v)
				}
				if resp, err := http.DefaultClient.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			c3 := hold(alice) // c2 and c3: at the limit again, not over it
			if resp, _ := g.send(t, pp.method, "/api/v1/anchors/x", body, false, alice); resp.StatusCode != 429 {
				t.Errorf("after the panics, a third request: %d, want 429", resp.StatusCode)
			}
			c2()
			c3()
			close(up.release)
			testenv.Eventually(t, 5*time.Second, "every slot back", func() bool {
				m := g.scrape(t)
				return m[`lucid_gateway_requests_in_progress{tier="free"}`] == 0 && m[`lucid_gateway_requests_in_progress{tier="premium"}`] == 0 && g.app.inflightKeys() == 0
			})
		})
	}
}

// TestConcurrencyOfAnonymousClients: anonymous requests are bounded per
// client address, at the free tier's concurrency.
func TestConcurrencyOfAnonymousClients(t *testing.T) {
	up := newHolding(t)
	g := startGateway(t, up.URL, map[string]string{"LUCID_CONCURRENCY_FREE": "1", "LUCID_RATE_FREE": "10000"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url+"/auth/hold", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp, _ := g.get(t, "/auth/x", nil); resp.StatusCode != 429 {
		t.Errorf("a second anonymous request from the same address: %d", resp.StatusCode)
	}
}
