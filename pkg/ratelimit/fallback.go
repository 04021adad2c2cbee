package ratelimit

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// Fallback is a Limiter that decides with a primary (Redis, shared by
// several gateways) and, while the primary cannot decide, with a local one
// (Memory): a failing shared limiter means a per-gateway budget, never no
// limit at all.
//
// It is a small circuit breaker. The first failure moves decisions to the
// local limiter; the primary is then left alone for Retry, after which one
// probe, off any request's path, asks it again, and decisions return to it
// when the probe succeeds. So while Redis is down no request waits for its
// timeout but those in flight when it went away.
type Fallback struct {
	primary, local Limiter
	retry          time.Duration
	clock          func() time.Time
	onChange       func(active bool, err error)

	active    atomic.Bool
	retryAt   atomic.Int64 // clock time, unix nanos, of the next probe
	probing   atomic.Bool
	decisions atomic.Uint64 // AllowN answered by the local limiter
}

var _ Limiter = (*Fallback)(nil)

// FallbackOptions tune a Fallback; the zero value is usable.
type FallbackOptions struct {
	// Retry is how long the primary is left alone after a failure before
	// it is probed again; default DefaultRetry.
	Retry time.Duration
	// OnChange is called once when decisions move to the local limiter
	// (active, with the primary's error) and once when they return (not
	// active, nil error); never per request. It must not block.
	OnChange func(active bool, err error)
	// Clock is the real time the breaker runs on (default time.Now), apart
	// from the decisions' own now, which a caller may fake.
	Clock func() time.Time
}

// DefaultRetry is how long a failed primary is left alone by default:
// short enough that a restarted Redis takes over again within a second or
// so, long enough that a down one costs one probe a second.
const DefaultRetry = time.Second

// fallbackProbeTimeout bounds one probe of the primary.
const fallbackProbeTimeout = 2 * time.Second

// fallbackProbeKey is the key a probe decides on: a real decision, so it
// exercises what requests need (for Redis: the script and a write), on a
// key of its own with a budget it never exhausts.
const fallbackProbeKey = "fallback-probe"

var probeLimit = Limit{Limit: 1 << 20, Period: time.Second, Burst: 1 << 20}

// NewFallback returns a limiter deciding with primary and, while primary
// fails, with local.
func NewFallback(primary, local Limiter, o FallbackOptions) *Fallback {
	if o.Retry <= 0 {
		o.Retry = DefaultRetry
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.OnChange == nil {
		o.OnChange = func(bool, error) {}
	}
	return &Fallback{primary: primary, local: local, retry: o.Retry, clock: o.Clock, onChange: o.OnChange}
}

// Active reports whether decisions are made by the local limiter.
func (f *Fallback) Active() bool { return f.active.Load() }

// LocalDecisions counts the decisions the local limiter has made.
func (f *Fallback) LocalDecisions() uint64 { return f.decisions.Load() }

// AllowN implements Limiter.
func (f *Fallback) AllowN(ctx context.Context, key string, l Limit, n int, now time.Time) (Decision, error) {
	if !f.useLocal() {
		d, err := f.primary.AllowN(ctx, key, l, n, now)
		if !f.failed(ctx, err) {
			return d, err
		}
	}
	f.decisions.Add(1)
	return f.local.AllowN(ctx, key, l, n, now)
}

// Charge implements Limiter.
func (f *Fallback) Charge(ctx context.Context, key string, l Limit, n int, now time.Time) error {
	if !f.useLocal() {
		err := f.primary.Charge(ctx, key, l, n, now)
		if !f.failed(ctx, err) {
			return err
		}
	}
	return f.local.Charge(ctx, key, l, n, now)
}

// useLocal reports whether to skip the primary, and starts a probe of it
// when one is due.
func (f *Fallback) useLocal() bool {
	if !f.active.Load() {
		return false
	}
	if f.clock().UnixNano() >= f.retryAt.Load() && f.probing.CompareAndSwap(false, true) {
		go f.probe()
	}
	return true
}

// failed reports whether err is the primary failing, and if so trips the
// breaker. An invalid cost is the caller's mistake, and a request whose
// client has gone says nothing about the primary: both are passed on.
func (f *Fallback) failed(ctx context.Context, err error) bool {
	if err == nil || errors.Is(err, ErrCost) || ctx.Err() != nil {
		return false
	}
	f.retryAt.Store(f.clock().Add(f.retry).UnixNano())
	if f.active.CompareAndSwap(false, true) {
		f.onChange(true, err)
	}
	return true
}

// probe asks the primary for one decision; on success decisions return to
// it, otherwise it is left alone for another Retry.
func (f *Fallback) probe() {
	defer f.probing.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), fallbackProbeTimeout)
	defer cancel()
	if _, err := f.primary.AllowN(ctx, fallbackProbeKey, probeLimit, 1, f.clock()); err != nil {
		f.retryAt.Store(f.clock().Add(f.retry).UnixNano())
		return
	}
	if f.active.CompareAndSwap(true, false) {
		f.onChange(false, nil)
	}
}
