// Package ratelimit decides whether a request fits its caller's budget,
// with the generic cell rate algorithm (GCRA): a sustained rate of Limit
// requests per Period, and a burst of Burst requests above it.
//
// GCRA keeps one time per key (the theoretical arrival time, TAT), so a
// decision is O(1) and the state is 8 bytes a key. A request may cost more
// than one unit (AllowN), and work found out only afterwards can be charged
// (Charge). The in-memory Limiter here is sharded, bounded and forgets idle
// keys; a Redis-backed one shares a budget between gateways, and Fallback
// decides from a local one while Redis cannot.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
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

// MaxCost is the most a single decision can charge: a whole budget, the
// burst plus the one unit the interval allows. A dearer request could never
// be allowed, so AllowN refuses to decide it (ErrCost); a caller caps what
// it charges up front and may Charge the rest afterwards.
func (l Limit) MaxCost() int { return l.Burst + 1 }

// ErrCost is returned by AllowN for a cost outside 1..MaxCost, and by
// Charge for one below 1.
var ErrCost = errors.New("ratelimit: cost outside the budget")

// checkCost refuses the costs AllowN cannot decide.
func (l Limit) checkCost(n int) error {
	if n < 1 || n > l.MaxCost() {
		return fmt.Errorf("%w: %d units, budget holds 1..%d", ErrCost, n, l.MaxCost())
	}
	return nil
}

// cost is the time n units take from the budget; the common n=1 spares the
// multiplication.
func (l Limit) cost(n int) time.Duration {
	if n == 1 {
		return l.interval()
	}
	return time.Duration(n) * l.interval()
}

// Decision is the answer for one request, with what the RateLimit-*
// headers say.
type Decision struct {
	Allowed bool
	// Limit is the budget's requests per period.
	Limit int
	// Remaining is how many more units would be allowed right now.
	Remaining int
	// Reset is how long until the budget is fully restored.
	Reset time.Duration
	// RetryAfter, when refused, is how long until the request fits.
	RetryAfter time.Duration
}

// Limiter decides requests against budgets, per key. A request costs
// units: 1 for most, more for work such as a large upload.
type Limiter interface {
	// AllowN decides a request costing n units (1..l.MaxCost(), else
	// ErrCost) and, if it is allowed, takes them from key's budget.
	AllowN(ctx context.Context, key string, l Limit, n int, now time.Time) (Decision, error)
	// Charge takes n more units from key's budget whatever is left: for
	// work found out after the request was allowed (a body without a
	// length). The budget may go into debt; the key's next request waits.
	Charge(ctx context.Context, key string, l Limit, n int, now time.Time) error
}

// decide applies GCRA to a stored TAT (zero if none) for a request of n
// units and returns the new TAT (unchanged when refused) and the decision.
func decide(tat time.Time, l Limit, n int, now time.Time) (time.Time, Decision) {
	interval, tol := l.interval(), l.tolerance()
	if tat.Before(now) {
		tat = now
	}
	newTAT := tat.Add(l.cost(n))
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

// charge adds n units to a stored TAT unconditionally.
func charge(tat time.Time, l Limit, n int, now time.Time) time.Time {
	if tat.Before(now) {
		tat = now
	}
	return tat.Add(l.cost(n))
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

// Allow decides a request of one unit.
func (m *Memory) Allow(ctx context.Context, key string, l Limit, now time.Time) (Decision, error) {
	return m.AllowN(ctx, key, l, 1, now)
}

// AllowN implements Limiter.
func (m *Memory) AllowN(_ context.Context, key string, l Limit, n int, now time.Time) (Decision, error) {
	if n != 1 {
		if err := l.checkCost(n); err != nil {
			return Decision{}, err
		}
	}
	sh := m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tat, d := decide(sh.tats[key], l, n, now)
	if d.Allowed {
		sh.store(key, tat, m.max, now)
	}
	return d, nil
}

// Charge implements Limiter.
func (m *Memory) Charge(_ context.Context, key string, l Limit, n int, now time.Time) error {
	if n < 1 {
		return fmt.Errorf("%w: charge of %d units", ErrCost, n)
	}
	sh := m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.store(key, charge(sh.tats[key], l, n, now), m.max, now)
	return nil
}

func (m *Memory) shard(key string) *shard {
	return &m.shards[maphash.String(m.seed, key)%uint64(len(m.shards))]
}

// store sets key's TAT, making room first if key is new and the shard is
// full.
func (sh *shard) store(key string, tat time.Time, limit int, now time.Time) {
	if _, ok := sh.tats[key]; !ok && len(sh.tats) >= limit {
		sh.evict(now)
	}
	sh.tats[key] = tat
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
