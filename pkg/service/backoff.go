package service

import (
	"context"
	"time"
)

// Backoff is the delay of a retry loop (reconnecting to the engine,
// resubmitting, re-querying Consul): it starts at Min, doubles after each
// wait up to Max, and goes back to Min on Reset, after a success.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Delay is the wait the next Wait will make.
func (b *Backoff) Delay() time.Duration {
	if b.cur < b.Min {
		return b.Min
	}
	return b.cur
}

// AtLeast raises the next wait to d (capped at Max), for failures that
// will not go away quickly.
func (b *Backoff) AtLeast(d time.Duration) { b.cur = min(max(b.Delay(), d), b.Max) }

// Reset returns to the shortest wait.
func (b *Backoff) Reset() { b.cur = b.Min }

// Wait sleeps the current delay and doubles it. It returns false, at once,
// when ctx ends.
func (b *Backoff) Wait(ctx context.Context) bool {
	d := b.Delay()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	}
	b.cur = min(d*2, b.Max)
	return true
}
