package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
)

// BenchmarkProxy drives the gateway over loopback with keep-alive clients
// (JWT verified, rate limit decided, request proxied to a trivial
// backend): a read, and a small POST whose body streams through. The
// client and backend run in the same process, so the figures compare
// paths rather than measure the gateway alone; scripts/bench-gateway.sh
// does that. For profiling:
//
//	go test -run '^$' -bench Proxy -cpuprofile cpu.out ./services/gateway
func BenchmarkProxy(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	g := startGatewayWith(b, backend.URL, map[string]string{"LUCID_RATE_ENTERPRISE": "10000000"}, nil)
	tok := g.token(b, "bench", auth.TierEnterprise)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, bc := range []struct{ name, method, body string }{
		{"read", http.MethodGet, ""},
		{"post", http.MethodPost, `{"session":"s"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var body io.Reader
					if bc.body != "" {
						body = strings.NewReader(bc.body)
					}
					req, _ := http.NewRequest(bc.method, g.url+"/api/v1/anchors/x", body)
					req.Header.Set("Authorization", "Bearer "+tok)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// BenchmarkAdmission is the gateway's own per-request work before
// proxying, without the network: the principal's key, the concurrency slot
// and the rate-limit decision (in memory), for a token's sub and for an
// anonymous IPv4 and IPv6 client. "rate limit" alone is what a request paid
// before concurrency limits.
func BenchmarkAdmission(b *testing.B) {
	be := httptest.NewServer(http.NotFoundHandler())
	defer be.Close()
	g := startGatewayWith(b, be.URL, map[string]string{"LUCID_RATE_ENTERPRISE": "10000000", "LUCID_RATE_FREE": "10000000"}, nil)
	a := g.app
	tok := g.token(b, "bench", auth.TierEnterprise)
	claims, err := auth.Parse([]byte(secret), tok, func() time.Time { return g.now })
	if err != nil {
		b.Fatal(err)
	}
	now := g.now // moves on through every run, so no key runs out of budget
	for _, bc := range []struct {
		name, remote string
		claims       *auth.Claims
		concurrency  bool
	}{
		{"sub/rate limit", "203.0.113.7:1234", &claims, false},
		{"sub/rate limit and concurrency", "203.0.113.7:1234", &claims, true},
		{"ipv4/rate limit and concurrency", "203.0.113.7:1234", nil, true},
		{"ipv6/rate limit and concurrency", "[2001:db8:1:2::7]:1234", nil, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			fc := fastRequest(b, http.MethodGet, bc.remote, nil, "")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(time.Millisecond)
				bud, key := a.principal(fc, bc.claims)
				if bc.concurrency {
					if err := a.enter(bud, key); err != nil {
						b.Fatal(err)
					}
				}
				cost, _, _ := a.requestCost(fc, bud)
				if err := a.limit(ctx, fc, bud, key, cost, now); err != nil {
					b.Fatal(err)
				}
				if bc.concurrency {
					a.leave(bud, key)
				}
			}
		})
	}
}
