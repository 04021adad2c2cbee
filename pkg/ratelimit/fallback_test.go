package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// flaky is a primary that fails while down, counting calls.
type flaky struct {
	Limiter
	down  atomic.Bool
	calls atomic.Int64
}

var errDown = errors.New("redis: connection refused")

func (f *flaky) AllowN(ctx context.Context, key string, l Limit, n int, now time.Time) (Decision, error) {
	f.calls.Add(1)
	if f.down.Load() {
		return Decision{}, errDown
	}
	return f.Limiter.AllowN(ctx, key, l, n, now)
}

func (f *flaky) Charge(ctx context.Context, key string, l Limit, n int, now time.Time) error {
	f.calls.Add(1)
	if f.down.Load() {
		return errDown
	}
	return f.Limiter.Charge(ctx, key, l, n, now)
}

// changes records a Fallback's OnChange calls.
type changes struct {
	mu  sync.Mutex
	got []string
}

func (c *changes) record(active bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if active {
		c.got = append(c.got, "local: "+err.Error())
	} else {
		c.got = append(c.got, "primary")
	}
}

func (c *changes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

// TestFallbackBreaker: a failing primary moves decisions to the local
// budget, which still limits; the primary is not asked again (so no
// request waits for it) until Retry has passed, then a probe off the
// request path brings decisions back. Each move is reported once.
func TestFallbackBreaker(t *testing.T) {
	primary := &flaky{Limiter: NewMemory(100)}
	var clock atomic.Int64
	clock.Store(time.Unix(1_800_000_000, 0).UnixNano())
	var ch changes
	f := NewFallback(primary, NewMemory(100), FallbackOptions{
		Retry:    time.Second,
		Clock:    func() time.Time { return time.Unix(0, clock.Load()) },
		OnChange: ch.record,
	})
	l := Limit{Limit: 60, Period: time.Minute, Burst: 2}
	now := time.Unix(1_800_000_000, 0)
	ctx := context.Background()
	allow := func() bool {
		t.Helper()
		d, err := f.AllowN(ctx, "k", l, 1, now)
		if err != nil {
			t.Fatalf("Fallback answered an error: %v", err)
		}
		return d.Allowed
	}

	if !allow() || f.Active() || primary.calls.Load() != 1 {
		t.Fatalf("healthy primary: active %v, %d calls", f.Active(), primary.calls.Load())
	}
	primary.down.Store(true)
	allowed := 0
	for range 10 {
		if allow() {
			allowed++
		}
	}
	// The local budget is fresh (burst 2 + 1) and still limits.
	if allowed != 3 || !f.Active() || f.LocalDecisions() != 10 {
		t.Errorf("primary down: %d allowed, active %v, %d local decisions; want 3, true, 10", allowed, f.Active(), f.LocalDecisions())
	}
	if n := primary.calls.Load(); n != 2 {
		t.Errorf("the primary was asked %d times; want 2 (once healthy, once failing, then left alone)", n)
	}
	if err := f.Charge(ctx, "k", l, 5, now); err != nil || primary.calls.Load() != 2 {
		t.Errorf("charge while down: %v, primary calls %d", err, primary.calls.Load())
	}

	// After Retry, a request starts one probe and is itself decided locally.
	clock.Add(int64(time.Second))
	allow()
	testenv.Eventually(t, 5*time.Second, "a probe of the primary", func() bool { return primary.calls.Load() == 3 && !f.probing.Load() })
	if !f.Active() {
		t.Fatal("a failed probe ended the fallback")
	}
	allow() // the probe failed: left alone for another second
	if n := primary.calls.Load(); n != 3 {
		t.Errorf("primary asked %d times right after a failed probe; want 3", n)
	}

	primary.down.Store(false)
	clock.Add(int64(time.Second))
	allow()
	testenv.Eventually(t, 5*time.Second, "decisions back on the primary", func() bool { return !f.Active() })
	before := primary.calls.Load()
	allow()
	if primary.calls.Load() != before+1 {
		t.Error("decisions did not return to the primary")
	}
	if got := ch.list(); len(got) != 2 || got[0] != "local: "+errDown.Error() || got[1] != "primary" {
		t.Errorf("changes reported: %q; want one move to local with the error, one back", got)
	}
}

// TestFallbackPassesCallerErrors: an invalid cost and a client that has
// gone are not the primary failing.
func TestFallbackPassesCallerErrors(t *testing.T) {
	primary := &flaky{Limiter: NewMemory(100)}
	f := NewFallback(primary, NewMemory(100), FallbackOptions{})
	l := Limit{Limit: 60, Period: time.Minute, Burst: 2}
	if _, err := f.AllowN(context.Background(), "k", l, 10, time.Now()); !errors.Is(err, ErrCost) || f.Active() {
		t.Errorf("cost 10 of a budget of 3: %v, active %v", err, f.Active())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	primary.down.Store(true)
	if _, err := f.AllowN(ctx, "k", l, 1, time.Now()); err == nil || f.Active() {
		t.Errorf("client gone: %v, active %v", err, f.Active())
	}
}

// BenchmarkFallbackAllow is BenchmarkMemoryAllow through a Fallback whose
// primary answers: what the decorator adds to every decision.
func BenchmarkFallbackAllow(b *testing.B) {
	benchDecisions(b, NewFallback(NewMemory(100_000), NewMemory(100_000), FallbackOptions{}), 1)
}
