package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
)

// BenchmarkProxy drives the gateway's proxy path over loopback with
// keep-alive clients (JWT verified, rate limit decided, request proxied to
// a trivial backend), for profiling:
//
//	go test -run '^$' -bench Proxy -cpuprofile cpu.out ./services/gateway
func BenchmarkProxy(b *testing.B) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer backend.Close()
	t := &testing.T{}
	g := startGatewayWith(t, backend.URL, map[string]string{"LUCID_RATE_ENTERPRISE": "10000000"}, nil)
	tok := g.token(t, "bench", auth.TierEnterprise)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, _ := http.NewRequest(http.MethodGet, g.url+"/api/v1/anchors/x", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		for pb.Next() {
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
}
