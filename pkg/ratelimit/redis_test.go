package ratelimit

import (
	"context"
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
	defer a.Close()
	defer b.Close()
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
	a.Close()
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
