package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
)

// BenchmarkProxy drives the gateway over loopback with keep-alive clients
// (JWT verified, rate limit decided, request proxied to a trivial
// backend): a read on the fast path, and a small POST through
// httputil.ReverseProxy. The client and backend run in the same process,
// so the figures compare paths rather than measure the gateway alone;
// scripts/bench-gateway.sh does that. For profiling:
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
