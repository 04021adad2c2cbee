// Package ratelimit decides whether a request fits its caller's budget,
// with the generic cell rate algorithm (GCRA): a sustained rate of Limit
// requests per Period, and a burst of Burst requests above it.
//
// GCRA keeps one time per key (the theoretical arrival time, TAT), so a
// decision is O(1) and the state is 8 bytes a key. The in-memory Limiter
// here is sharded, bounded and forgets idle keys; a Redis-backed one shares
// a budget between gateways.
package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// Limit is a budget: Limit requests per Period, bursting to Burst.
type Limit struct {
	Limit  int
	Period time.Duration
	Burst  int
}

// interval is the time one request costs.
func (l Limit) interval() time.Duration { return l.Period / time.Duration(l.Limit) }

// tolerance is how far ahead of now the TAT may run: the burst.
func (l Limit) tolerance() time.Duration { return time.Duration(l.Burst) * l.interval() }

// Decision is the answer for one request, with what the RateLimit-*
// headers say.
type Decision struct {
	Allowed bool
	// Limit is the budget's requests per period.
	Limit int
	// Remaining is how many more requests would be allowed right now.
	Remaining int
	// Reset is how long until the budget is fully restored.
	Reset time.Duration
	// RetryAfter, when refused, is how long until one request fits.
	RetryAfter time.Duration
}

// Limiter decides requests against budgets, per key.
type Limiter interface {
	Allow(ctx context.Context, key string, l Limit, now time.Time) (Decision, error)
}

// decide applies GCRA to a stored TAT (zero if none) and returns the new
// TAT (unchanged when refused) and the decision.
func decide(tat time.Time, l Limit, now time.Time) (time.Time, Decision) {
	interval, tol := l.interval(), l.tolerance()
	if tat.Before(now) {
		tat = now
	}
	newTAT := tat.Add(interval)
	allowAt := newTAT.Add(-tol - interval)
	d := Decision{Limit: l.Limit}
	if now.Before(allowAt) {
		d.RetryAfter = allowAt.Sub(now)
		d.Reset = tat.Sub(now)
		d.Remaining = 0
		return tat, d
	}
	d.Allowed = true
	d.Reset = newTAT.Sub(now)
	d.Remaining = int((tol + interval - newTAT.Sub(now)) / interval)
	if d.Remaining < 0 {
		d.Remaining = 0
	}
	return newTAT, d
}

// Memory is an in-memory Limiter: shards of keys with their TATs, each
// bounded; a key whose TAT has passed carries no information and is
// dropped first.
type Memory struct {
	seed   maphash.Seed
	shards []shard
	max    int // keys per shard
}

type shard struct {
	mu   sync.Mutex
	tats map[string]time.Time
}

var _ Limiter = (*Memory)(nil)

// NewMemory returns a limiter holding at most maxKeys keys.
func NewMemory(maxKeys int) *Memory {
	const n = 64
	m := &Memory{seed: maphash.MakeSeed(), shards: make([]shard, n), max: max(maxKeys/n, 16)}
	for i := range m.shards {
		m.shards[i].tats = map[string]time.Time{}
	}
	return m
}

// Allow implements Limiter.
func (m *Memory) Allow(_ context.Context, key string, l Limit, now time.Time) (Decision, error) {
	sh := &m.shards[maphash.String(m.seed, key)%uint64(len(m.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tat, d := decide(sh.tats[key], l, now)
	if d.Allowed {
		if _, ok := sh.tats[key]; !ok && len(sh.tats) >= m.max {
			sh.evict(now)
		}
		sh.tats[key] = tat
	}
	return d, nil
}

// evict makes room by sampling: it looks at up to 32 keys (map order is
// random), drops those whose TAT has passed (their budget is whole again,
// so forgetting them changes nothing) and, if none had, the sampled key
// closest to whole. Constant work however full the shard is.
func (sh *shard) evict(now time.Time) {
	var victim string
	var earliest time.Time
	n, dropped := 0, false
	for k, t := range sh.tats {
		if !t.After(now) {
			delete(sh.tats, k)
			dropped = true
		} else if victim == "" || t.Before(earliest) {
			victim, earliest = k, t
		}
		if n++; n == 32 {
			break
		}
	}
	if !dropped && victim != "" {
		delete(sh.tats, victim)
	}
}

// Len returns how many keys are held.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		m.shards[i].mu.Lock()
		n += len(m.shards[i].tats)
		m.shards[i].mu.Unlock()
	}
	return n
}
