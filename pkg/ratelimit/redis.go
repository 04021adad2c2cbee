package ratelimit

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// gcraScript is one GCRA decision, atomic in Redis: several gateways share
// one budget per key. KEYS[1] holds the TAT in microseconds; it expires
// when the budget is whole again.
//
// ARGV: now (µs), cost (µs: units × interval), tolerance + interval (µs),
// force (1: charge whatever is left, for Charge).
// Returns {allowed, tat_us}.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local slack = tonumber(ARGV[3])
local tat = tonumber(redis.call("GET", KEYS[1]) or "0")
if tat < now then tat = now end
local new_tat = tat + cost
if ARGV[4] ~= "1" and now < new_tat - slack then
  return {0, tat}
end
redis.call("SET", KEYS[1], new_tat, "PX", math.ceil((new_tat - now) / 1000) + 1)
return {1, new_tat}
`)

// Redis is a Limiter whose state is in Redis.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a limiter keeping its state in client under prefix.
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
}

// Allow decides a request of one unit.
func (r *Redis) Allow(ctx context.Context, key string, l Limit, now time.Time) (Decision, error) {
	return r.AllowN(ctx, key, l, 1, now)
}

// AllowN implements Limiter. An error means Redis could not decide; the
// caller chooses what happens then (Fallback decides locally).
func (r *Redis) AllowN(ctx context.Context, key string, l Limit, n int, now time.Time) (Decision, error) {
	if n != 1 {
		if err := l.checkCost(n); err != nil {
			return Decision{}, err
		}
	}
	interval, tol, cost := l.interval(), l.tolerance(), l.cost(n)
	ok, tat, err := r.run(ctx, key, now, cost, tol+interval, false)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Limit: l.Limit, Allowed: ok}
	if !d.Allowed {
		d.RetryAfter = tat.Add(cost).Add(-tol - interval).Sub(now)
		d.Reset = tat.Sub(now)
		return d, nil
	}
	d.Reset = tat.Sub(now)
	d.Remaining = max(int((tol+interval-tat.Sub(now))/interval), 0)
	return d, nil
}

// Charge implements Limiter.
func (r *Redis) Charge(ctx context.Context, key string, l Limit, n int, now time.Time) error {
	if n < 1 {
		return fmt.Errorf("%w: charge of %d units", ErrCost, n)
	}
	_, _, err := r.run(ctx, key, now, l.cost(n), 0, true)
	return err
}

// run runs the script once and returns whether it took the cost and the
// key's TAT after it.
func (r *Redis) run(ctx context.Context, key string, now time.Time, cost, slack time.Duration, force bool) (bool, time.Time, error) {
	f := 0
	if force {
		f = 1
	}
	res, err := gcraScript.Run(ctx, r.client, []string{r.prefix + key},
		now.UnixMicro(), cost.Microseconds(), slack.Microseconds(), f).Int64Slice()
	if err != nil {
		return false, time.Time{}, fmt.Errorf("rate limit in redis: %w", err)
	}
	if len(res) != 2 {
		return false, time.Time{}, fmt.Errorf("rate limit in redis: unexpected answer %v", res)
	}
	return res[0] == 1, time.UnixMicro(res[1]), nil
}

// quiet keeps go-redis from printing: its failures reach callers as
// errors, and the caller logs them.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quiet{}) }

// Timeouts of the Redis client. A decision is on a request's path, so a
// Redis that cannot answer must cost little: go-redis's defaults (5 s to
// dial, each dial tried 5 times 100 ms apart, each command retried 3
// times) made one decision against a stopped Redis take 1.8 s. With these
// it fails in about 15 ms, against a Redis that accepts and stays silent in
// 0.2 s, against an unreachable one in at most about 0.5 s (two dials); and
// Fallback keeps even that off all but the requests in flight when Redis
// went away.
const (
	redisDialTimeout = 250 * time.Millisecond // a LAN of Pis dials in well under 10 ms
	redisIOTimeout   = 200 * time.Millisecond // one GCRA script runs in microseconds
	redisPoolTimeout = 250 * time.Millisecond // waiting for a free connection
)

// ParseRedisURL opens a client for REDIS_URL (redis://[user:pass@]host:port/db),
// with timeouts fit for a request's path.
func ParseRedisURL(raw string) (*redis.Client, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		// The URL may hold a password: say what is wrong, not what it is.
		return nil, fmt.Errorf("REDIS_URL is not a redis:// URL")
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = redisDialTimeout, redisIOTimeout, redisIOTimeout
	opts.PoolTimeout = redisPoolTimeout
	opts.DialerRetries = 1 // one dial per attempt
	// One retry, soon: it rescues a command sent on a connection Redis
	// closed (a restart) without doubling a long wait.
	opts.MaxRetries, opts.MinRetryBackoff, opts.MaxRetryBackoff = 1, 5*time.Millisecond, 20*time.Millisecond
	opts.PoolSize = 64
	return redis.NewClient(opts), nil
}
