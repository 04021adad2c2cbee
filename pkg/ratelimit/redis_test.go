package ratelimit

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// TestRedisSharedBudget: two limiters (two gateways) on one real Redis
// share a budget exactly; with Redis gone, Allow says so.
func TestRedisSharedBudget(t *testing.T) {
	addr := testenv.StartRedis(t)
	a, err := ParseRedisURL("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ParseRedisURL("redis://" + addr + "/0")
	defer closeT(t, b)
	ga, gb := NewRedis(a, "lucid:rl:"), NewRedis(b, "lucid:rl:")
	l := Limit{Limit: 100, Period: time.Minute, Burst: 10}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	ctx := context.Background()
	allowed := 0
	for i := 0; i < 40; i++ {
		g := ga
		if i%2 == 1 {
			g = gb
		}
		d, err := g.Allow(ctx, "sub:alice", l, now)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed {
			allowed++
		} else if d.RetryAfter <= 0 {
			t.Errorf("refusal without a retry time: %+v", d)
		}
	}
	if allowed != 11 {
		t.Errorf("two gateways allowed %d together, want 11 (burst 10 + 1)", allowed)
	}
	// The same sequence as the in-memory limiter, decision for decision.
	m := NewMemory(100)
	for i := 0; i < 30; i++ {
		at := now.Add(time.Duration(i) * 250 * time.Millisecond)
		dm, _ := m.Allow(ctx, "k", l, at)
		dr, _ := ga.Allow(ctx, "k", l, at)
		if dm.Allowed != dr.Allowed || dm.Remaining != dr.Remaining {
			t.Fatalf("step %d: memory %+v, redis %+v", i, dm, dr)
		}
	}
	closeT(t, a)
	if _, err := ga.Allow(ctx, "x", l, now); err == nil {
		t.Error("no error with the client closed")
	}
}

func TestRedisURLErrorHidesPassword(t *testing.T) {
	_, err := ParseRedisURL("http://user:hunter2@host")
	if err == nil || contains(err.Error(), "hunter2") {
		t.Errorf("err = %v", err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestRedisCostsAgreeWithMemory: requests of several units and charges
// after the fact decide the same in Redis as in memory, step by step.
func TestRedisCostsAgreeWithMemory(t *testing.T) {
	addr := testenv.StartRedis(t)
	c, err := ParseRedisURL("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	r, m := NewRedis(c, "lucid:rl:"), NewMemory(100)
	l := Limit{Limit: 100, Period: time.Minute, Burst: 10}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	ctx := context.Background()
	for i, n := range []int{9, 3, 2, 1, -5, 11, 1, -20, 1, 4, 1, 11} {
		at := now.Add(time.Duration(i) * 700 * time.Millisecond)
		if n < 0 { // a charge after the fact
			if err := r.Charge(ctx, "k", l, -n, at); err != nil {
				t.Fatal(err)
			}
			_ = m.Charge(ctx, "k", l, -n, at)
			continue
		}
		dm, _ := m.AllowN(ctx, "k", l, n, at)
		dr, err := r.AllowN(ctx, "k", l, n, at)
		if err != nil {
			t.Fatal(err)
		}
		if dm != dr {
			t.Fatalf("step %d (%d units): memory %+v, redis %+v", i, n, dm, dr)
		}
	}
	if _, err := r.AllowN(ctx, "k", l, 12, now); !errors.Is(err, ErrCost) {
		t.Errorf("cost above the budget: %v", err)
	}
}

// TestRedisClientFitsARequestPath: the client's timeouts and retries are
// short, so a Redis that cannot answer costs a request little.
func TestRedisClientFitsARequestPath(t *testing.T) {
	c, err := ParseRedisURL("redis://127.0.0.1:1/0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	o := c.Options()
	if o.DialTimeout > 250*time.Millisecond || o.ReadTimeout > 200*time.Millisecond || o.WriteTimeout > 200*time.Millisecond ||
		o.PoolTimeout > 250*time.Millisecond || o.MaxRetries > 1 || o.DialerRetries != 1 || o.MaxRetryBackoff > 50*time.Millisecond {
		t.Errorf("dial %s read %s write %s pool %s, %d retries (backoff up to %s), %d dials per attempt",
			o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, o.MaxRetries, o.MaxRetryBackoff, o.DialerRetries)
	}
}

// TestFallbackWhenRedisDies: over a real Redis, limits hold from Redis;
// with Redis killed they still hold, from the local budget, and the move is
// reported once; with Redis back, decisions return to it.
func TestFallbackWhenRedisDies(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	c, err := ParseRedisURL("redis://" + srv.Addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, c)
	var ch changes
	f := NewFallback(NewRedis(c, "lucid:rl:"), NewMemory(100), FallbackOptions{Retry: 50 * time.Millisecond, OnChange: ch.record})
	l := Limit{Limit: 100, Period: time.Minute, Burst: 10}
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	ctx := context.Background()
	burst := func(key string) int {
		t.Helper()
		allowed := 0
		for range 30 {
			d, err := f.AllowN(ctx, key, l, 1, now)
			if err != nil {
				t.Fatalf("Fallback answered an error: %v", err)
			}
			if d.Allowed {
				allowed++
			}
		}
		return allowed
	}
	if n := burst("sub:alice"); n != 11 || f.Active() {
		t.Fatalf("from Redis: %d allowed (want 11), fallback active %v", n, f.Active())
	}
	if n, _ := c.Exists(ctx, "lucid:rl:sub:alice").Result(); n != 1 {
		t.Fatal("the decisions were not Redis's")
	}

	srv.Stop()
	if n := burst("sub:alice"); n != 11 {
		t.Errorf("with Redis dead: %d allowed, want 11 from the local budget", n)
	}
	if !f.Active() || f.LocalDecisions() != 30 {
		t.Errorf("with Redis dead: active %v, %d local decisions", f.Active(), f.LocalDecisions())
	}
	if got := ch.list(); len(got) != 1 || !strings.HasPrefix(got[0], "local: rate limit in redis") {
		t.Errorf("changes: %q", got)
	}

	srv.Start(t)
	testenv.Eventually(t, 10*time.Second, "decisions back on Redis", func() bool {
		_, _ = f.AllowN(ctx, "sub:probe-trigger", l, 1, now)
		return !f.Active()
	})
	if n := burst("sub:bob"); n != 11 {
		t.Errorf("Redis back: %d allowed, want 11", n)
	}
	if n, _ := c.Exists(ctx, "lucid:rl:sub:bob").Result(); n != 1 {
		t.Error("after Redis came back, decisions were not Redis's")
	}
	if got := ch.list(); len(got) != 2 || got[1] != "primary" {
		t.Errorf("changes: %q", got)
	}
}

// closeT closes c and reports a failure.
func closeT(t *testing.T, c io.Closer) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}
