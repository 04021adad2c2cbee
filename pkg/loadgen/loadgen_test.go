package loadgen

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func get(c *http.Client, url string) func(context.Context, int) error {
	return func(ctx context.Context, _ int) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
}

func TestClosedLoop(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	r := Run(context.Background(), Options{Do: get(srv.Client(), srv.URL), Concurrency: 4, Duration: time.Second})
	if r.Requests < 100 || r.Errors != 0 || r.Throughput <= 0 || r.P50 <= 0 || r.P99 < r.P50 {
		t.Fatalf("result %+v", r)
	}
}

// TestOpenLoopCountsTheQueue: a server that stalls for a second holds up
// the requests due meanwhile; their latency counts from when they were
// due, so the stall shows in the high percentiles (a closed-loop or naive
// measurement would record one slow request).
func TestOpenLoopCountsTheQueue(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		if n.Add(1) == 50 {
			time.Sleep(time.Second)
		}
	}))
	defer srv.Close()
	r := Run(context.Background(), Options{Do: get(srv.Client(), srv.URL), Concurrency: 1, Rate: 100, Duration: 3 * time.Second})
	if r.P95 < 400*time.Millisecond {
		t.Fatalf("p95 %s after a 1 s stall at 100 req/s: the queue was not counted", r.P95)
	}
	if r.Requests < 250 {
		t.Errorf("%d requests in 3 s at 100/s", r.Requests)
	}
}

func TestCancelStillReports(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	r := Run(ctx, Options{Do: get(srv.Client(), srv.URL), Duration: time.Minute})
	if r.Elapsed > 2*time.Second || r.Requests == 0 {
		t.Fatalf("cancelled run: %+v", r)
	}
}

// TestOpenLoopHungServer: a server that never answers is a run of
// failures, not an empty one.
func TestOpenLoopHungServer(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	// Every request due over a second before the end is a failure: at
	// least 100 of the 150 due.
	r := Run(context.Background(), Options{Do: get(srv.Client(), srv.URL), Concurrency: 4, Rate: 50, Duration: 3 * time.Second})
	if r.Requests < 100 || r.Errors != r.Requests || r.P95 < 500*time.Millisecond {
		t.Fatalf("hung server: %d requests, %d errors, p95 %s", r.Requests, r.Errors, r.P95)
	}
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
