package gateway

import (
	"net/http"
	"net/http/httptest"
	"testing"
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
