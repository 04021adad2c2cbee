package anchoring

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

func startAnchoring(tb testing.TB) *httptest.Server {
	tb.Helper()
	return startAnchoringWith(tb, nil)
}

// startAnchoringWith is startAnchoring with env on top of its own.
func startAnchoringWith(tb testing.TB, env map[string]string) *httptest.Server {
	tb.Helper()
	return startAnchoringAt(tb, env, nil)
}

// startAnchoringAt is startAnchoringWith whose clock is now (nil: the
// wall clock).
func startAnchoringAt(tb testing.TB, env map[string]string, now func() time.Time) *httptest.Server {
	tb.Helper()
	app := New().(*App)
	app.now = now
	// No engine: this measures durable acceptance alone; the submitter
	// backs off quietly.
	vars := map[string]string{"BLOCKCHAIN_ENGINE_URL": "http://127.0.0.1:1"}
	maps.Copy(vars, env)
	r := envconfig.New(envconfig.Map(vars))
	app.Configure(r)
	if err := r.Err(); err != nil {
		tb.Fatal(err)
	}
	srv := service.New(servicetest.Config("anchoring", tb.TempDir()), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(func() { hs.Close(); cancel(); _ = app.Close() })
	return hs
}

// BenchmarkAccept posts distinct session manifests from 64 concurrent
// clients over loopback HTTP; each 202 means the anchor is fsynced in the
// queue. It reports accepted anchors per second and the p99 latency.
//
//	go test -run '^$' -bench Accept -benchtime 20000x ./services/anchoring
func BenchmarkAccept(b *testing.B) {
	hs := startAnchoring(b)
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i], _ = json.Marshal(chaintest.Anchor(i).Anchor)
	}
	owner := &service.Principal{Subject: chaintest.Anchor(0).Anchor.Owner, Tier: auth.TierEnterprise}
	client := &http.Client{Transport: &servicetest.Transport{Caller: "gateway", Principal: owner, Base: &http.Transport{MaxIdleConnsPerHost: 128}}}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				start := time.Now()
				resp, err := client.Post(hs.URL+"/api/v1/anchors", "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Error(fmt.Errorf("status %d", resp.StatusCode))
					return
				}
				lat[i] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "anchors/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
