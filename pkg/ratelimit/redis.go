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
// ARGV: now (µs), interval (µs), tolerance (µs).
// Returns {allowed, tat_us}.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call("GET", KEYS[1]) or "0")
if tat < now then tat = now end
local new_tat = tat + interval
if now < new_tat - tolerance - interval then
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

// Allow implements Limiter. An error means Redis could not decide; the
// caller chooses whether that lets the request through.
func (r *Redis) Allow(ctx context.Context, key string, l Limit, now time.Time) (Decision, error) {
	interval, tol := l.interval(), l.tolerance()
	nowUS := now.UnixMicro()
	res, err := gcraScript.Run(ctx, r.client, []string{r.prefix + key},
		nowUS, interval.Microseconds(), tol.Microseconds()).Int64Slice()
	if err != nil {
		return Decision{}, fmt.Errorf("rate limit in redis: %w", err)
	}
	if len(res) != 2 {
		return Decision{}, fmt.Errorf("rate limit in redis: unexpected answer %v", res)
	}
	tat := time.UnixMicro(res[1])
	d := Decision{Limit: l.Limit, Allowed: res[0] == 1}
	if !d.Allowed {
		d.RetryAfter = tat.Add(interval).Add(-tol - interval).Sub(now)
		d.Reset = tat.Sub(now)
		return d, nil
	}
	d.Reset = tat.Sub(now)
	d.Remaining = max(int((tol+interval-tat.Sub(now))/interval), 0)
	return d, nil
}

// quiet keeps go-redis from printing: its failures reach callers as
// errors, and the caller logs them.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quiet{}) }

// ParseRedisURL opens a client for REDIS_URL (redis://[user:pass@]host:port/db).
func ParseRedisURL(raw string) (*redis.Client, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		// The URL may hold a password: say what is wrong, not what it is.
		return nil, fmt.Errorf("REDIS_URL is not a redis:// URL")
	}
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout = time.Second, 200*time.Millisecond, 200*time.Millisecond
	opts.PoolSize = 64
	return redis.NewClient(opts), nil
}
