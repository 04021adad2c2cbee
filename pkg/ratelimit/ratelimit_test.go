package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestTiersAllowExactlyTheirBudget runs each Phase 2 tier against a fake
// clock: a fresh key gets its burst at once and then exactly the sustained
// rate, and a refusal says when to retry.
func TestTiersAllowExactlyTheirBudget(t *testing.T) {
	for _, perMin := range []int{100, 1000, 10000} {
		l := Limit{Limit: perMin, Period: time.Minute, Burst: perMin / 10}
		m := NewMemory(1000)
		now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
		ctx := context.Background()
		allowed := 0
		for i := 0; i < 2*perMin; i++ {
			if d, _ := m.Allow(ctx, "k", l, now); d.Allowed {
				allowed++
			}
		}
		// At one instant: the burst plus the one request the interval allows.
		if want := l.Burst + 1; allowed != want {
			t.Errorf("%d/min: %d allowed at once, want %d", perMin, allowed, want)
		}
		d, _ := m.Allow(ctx, "k", l, now)
		if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > l.interval() || d.Remaining != 0 {
			t.Errorf("%d/min: refusal = %+v", perMin, d)
		}
		// Over the following minute, exactly the sustained rate more.
		allowed = 0
		step := l.interval() / 4
		for at := now.Add(step); !at.After(now.Add(time.Minute)); at = at.Add(step) {
			if d, _ := m.Allow(ctx, "k", l, at); d.Allowed {
				allowed++
			}
		}
		if allowed != perMin {
			t.Errorf("%d/min: %d allowed over the next minute, want %d", perMin, allowed, perMin)
		}
	}
}

func TestRemainingCountsDown(t *testing.T) {
	l := Limit{Limit: 60, Period: time.Minute, Burst: 5}
	m := NewMemory(100)
	now := time.Unix(1_800_000_000, 0)
	var got []int
	for i := 0; i < 7; i++ {
		d, _ := m.Allow(context.Background(), "k", l, now)
		got = append(got, d.Remaining)
	}
	if fmt.Sprint(got) != "[5 4 3 2 1 0 0]" {
		t.Errorf("remaining = %v", got)
	}
}

func TestMemoryIsBounded(t *testing.T) {
	m := NewMemory(1024)
	l := Limit{Limit: 100, Period: time.Minute, Burst: 10}
	now := time.Unix(1_800_000_000, 0)
	for i := 0; i < 100_000; i++ {
		_, _ = m.Allow(context.Background(), fmt.Sprint("ip-", i), l, now)
	}
	if n := m.Len(); n > 1024+64 {
		t.Errorf("holds %d keys; bound is about 1024", n)
	}
}

func BenchmarkMemoryAllow(b *testing.B) { benchDecisions(b, NewMemory(100_000), 1) }

// benchDecisions decides requests of n units from 1,000 keys in parallel
// with l.
func benchDecisions(b *testing.B, lim Limiter, n int) {
	l := Limit{Limit: 10000, Period: time.Minute, Burst: 1000}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprint("user-", i)
	}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			_, _ = lim.AllowN(context.Background(), keys[i%len(keys)], l, n, now)
			i++
		}
	})
}

// TestCostTakesUnits: a request of n units takes n from the budget, is
// refused with the time until all n fit, and can take at most the whole
// budget (MaxCost) at once.
func TestCostTakesUnits(t *testing.T) {
	l := Limit{Limit: 60, Period: time.Minute, Burst: 10} // a unit a second
	m := NewMemory(100)
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	type step struct {
		n          int
		allowed    bool
		remaining  int
		retryAfter time.Duration
	}
	for i, s := range []step{
		{9, true, 2, 0},
		{3, false, 0, time.Second}, // 2 left: one more unit in a second
		{2, true, 0, 0},
		{1, false, 0, time.Second},
	} {
		d, err := m.AllowN(ctx, "k", l, s.n, now)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != s.allowed || d.Remaining != s.remaining || d.RetryAfter != s.retryAfter {
			t.Errorf("step %d (%d units): %+v, want allowed %v remaining %d retry after %s", i, s.n, d, s.allowed, s.remaining, s.retryAfter)
		}
	}
	if d, err := m.AllowN(ctx, "fresh", l, l.MaxCost(), now); err != nil || !d.Allowed || d.Remaining != 0 {
		t.Errorf("a whole budget at once: %+v, %v", d, err)
	}
	for _, n := range []int{0, -1, l.MaxCost() + 1} {
		if _, err := m.AllowN(ctx, "other", l, n, now); !errors.Is(err, ErrCost) {
			t.Errorf("cost %d: err = %v, want ErrCost", n, err)
		}
	}
}

// TestChargeGoesIntoDebt: work found out after the decision is charged
// whatever is left, and the key's next request waits for it.
func TestChargeGoesIntoDebt(t *testing.T) {
	l := Limit{Limit: 60, Period: time.Minute, Burst: 10}
	m := NewMemory(100)
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	if d, _ := m.AllowN(ctx, "k", l, 1, now); !d.Allowed {
		t.Fatal("first request refused")
	}
	if err := m.Charge(ctx, "k", l, 30, now); err != nil {
		t.Fatal(err)
	}
	// TAT is now+31 s; one more unit fits once it is within 11 s of now.
	d, _ := m.AllowN(ctx, "k", l, 1, now)
	if d.Allowed || d.RetryAfter != 21*time.Second {
		t.Errorf("after a charge of 30: %+v, want refused for 21 s", d)
	}
	if d, _ := m.AllowN(ctx, "k", l, 1, now.Add(21*time.Second)); !d.Allowed {
		t.Errorf("21 s later: %+v", d)
	}
	if err := m.Charge(ctx, "k", l, 0, now); !errors.Is(err, ErrCost) {
		t.Errorf("charge of 0: %v", err)
	}
}

// BenchmarkMemoryAllowN is BenchmarkMemoryAllow for requests of 3 units
// (a 4 MiB upload at the gateway's default unit).
func BenchmarkMemoryAllowN(b *testing.B) { benchDecisions(b, NewMemory(100_000), 3) }
