package gateway

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/envconfig"
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
		r := httptest.NewRequest(http.MethodGet, "/auth/x", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := g.app.clientKey(r); got != tc.want {
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
