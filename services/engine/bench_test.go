package engine

import (
	"context"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BenchmarkSlotAccuracy runs a one-node chain at a 1 s interval for
// LUCID_BENCH_SLOTS slots (default 20; the Phase 2 figure uses 100) and
// reports how late each block's production started after its wall-clock
// slot: p50, p99 and max in ms.
//
//	LUCID_BENCH_SLOTS=100 go test -run '^$' -bench SlotAccuracy -benchtime 1x ./services/engine
func BenchmarkSlotAccuracy(b *testing.B) {
	slots := 20
	if v, err := strconv.Atoi(os.Getenv("LUCID_BENCH_SLOTS")); err == nil && v > 0 {
		slots = v
	}
	var mu sync.Mutex
	var lags []float64
	done := make(chan struct{})
	cfg := nodeConfig(b, "bench", true)
	n := startNode(b, cfg)
	n.app.node.onSlot = func(lag time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if len(lags) < slots {
			lags = append(lags, float64(lag.Microseconds())/1000)
			if len(lags) == slots {
				close(done)
			}
		}
	}
	// Keep the mempool busy so blocks are not trivially empty.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		pace := time.NewTicker(5 * time.Millisecond)
		defer pace.Stop()
		for i := 0; ; i++ {
			_, _ = n.client.Submit(ctx, [][]byte{anchorJSON(i)})
			select {
			case <-ctx.Done():
				return
			case <-pace.C:
			}
		}
	}()
	b.ResetTimer()
	select {
	case <-done:
	case <-time.After(time.Duration(slots+10) * time.Second):
		b.Fatal("too few slots observed")
	}
	b.StopTimer()
	mu.Lock()
	slices.Sort(lags)
	p := func(q float64) float64 { return lags[int(q*float64(len(lags)-1))] }
	b.ReportMetric(p(0.50), "p50-ms")
	b.ReportMetric(p(0.99), "p99-ms")
	b.ReportMetric(lags[len(lags)-1], "max-ms")
	b.ReportMetric(float64(len(lags)), "slots")
	mu.Unlock()
}
