package loadgen

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The tests run on synctest's fake clock against in-process servers, so
// their durations are exact and a busy machine cannot starve a run.

// answerIn is a server that answers every request after d.
func answerIn(d time.Duration) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error { return wait(ctx, d) }
}

// wait returns after d, or early with ctx's error.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestClosedLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := Run(context.Background(), Options{Do: answerIn(time.Millisecond), Concurrency: 4, Duration: time.Second})
		// Four workers, one request a millisecond each, for a second; the
		// last of each is cut off by the end.
		if r.Requests < 3990 || r.Requests > 4000 || r.Errors != 0 || r.Throughput <= 0 || r.P50 < time.Millisecond || r.P99 < r.P50 {
			t.Fatalf("result %+v", r)
		}
	})
}

// TestOpenLoopCountsTheQueue: a server that stalls for a second holds up
// the requests due meanwhile; their latency counts from when they were
// due, so the stall shows in the high percentiles (a closed-loop or naive
// measurement would record one slow request).
func TestOpenLoopCountsTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		stallOnce := func(ctx context.Context, _ int) error {
			if n.Add(1) == 50 {
				return wait(ctx, time.Second)
			}
			return wait(ctx, time.Millisecond)
		}
		r := Run(context.Background(), Options{Do: stallOnce, Concurrency: 1, Rate: 100, Duration: 3 * time.Second})
		if r.P95 < 400*time.Millisecond {
			t.Fatalf("p95 %s after a 1 s stall at 100 req/s: the queue was not counted", r.P95)
		}
		if r.Requests < 250 {
			t.Errorf("%d requests in 3 s at 100/s", r.Requests)
		}
	})
}

func TestCancelStillReports(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		r := Run(ctx, Options{Do: answerIn(time.Millisecond), Duration: time.Minute})
		if r.Elapsed != 300*time.Millisecond || r.Requests == 0 {
			t.Fatalf("cancelled run: %+v", r)
		}
	})
}

// TestOpenLoopHungServer: a server that never answers is a run of
// failures, not an empty one.
func TestOpenLoopHungServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hung := func(ctx context.Context, _ int) error {
			<-ctx.Done()
			return ctx.Err()
		}
		// Every request due over a second before the end is a failure: at
		// least 100 of the 150 due.
		r := Run(context.Background(), Options{Do: hung, Concurrency: 4, Rate: 50, Duration: 3 * time.Second})
		if r.Requests < 100 || r.Errors != r.Requests || r.P95 < 500*time.Millisecond {
			t.Fatalf("hung server: %d requests, %d errors, p95 %s", r.Requests, r.Errors, r.P95)
		}
	})
}

// TestOpenLoopEndIsNoFailure: a server that answers at once never shows an
// error, however the end of the run falls between two due requests (a
// slot due as the run ends, or handed out late by a busy machine, is not
// a stall).
func TestOpenLoopEndIsNoFailure(t *testing.T) {
	for i := range 20 {
		r := Run(context.Background(), Options{Concurrency: 4, Rate: 100, Duration: 100 * time.Millisecond, Do: func(context.Context, int) error { return nil }})
		if r.Errors != 0 {
			t.Fatalf("run %d: %d errors (%s) from a server that answers at once", i, r.Errors, r.FirstError)
		}
	}
}
