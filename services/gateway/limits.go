package gateway

import (
	"context"
	"hash/maphash"
	"net/http"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/service"
)

// Limits count work, not only requests (DESIGN.md, "Work, not requests"):
// a request's body costs rate-limit units by its size, and each principal
// may have only so many requests in progress at a gateway at once.

// defaultUploadUnit is LUCID_RATE_UPLOAD_UNIT_BYTES's default: a request
// costs one unit, which covers its first 2 MiB of body, and one more per
// further started 2 MiB, so the data chain's default 1 MiB chunk costs what
// any request does, and its largest (16 MiB) costs 8 units, which fits the
// free tier's burst (10) in one decision.
const defaultUploadUnit = 2 << 20

// requestCost is what a request costs: now, in units taken before it is
// forwarded; and later, in units charged once it is done. A body with a
// Content-Length costs one unit per started upload unit (at least 1: a
// request's first upload unit comes with it), of which at most what one
// decision can take (Limit.MaxCost: a whole budget; a dearer decision
// could never be allowed) is taken up front and the rest afterwards. A body without a length costs 1 up front and its
// further units afterwards, counted as the bytes pass (counted).
// What is charged afterwards is at most the tier's limit (a period's
// worth): the principal's next requests wait for it.
func (a *App) requestCost(fc *fasthttp.RequestCtx, b *budget) (now, later int, counted bool) {
	switch n := int64(bodyLength(&fc.Request.Header)); {
	case n > 0:
		units := max(1, (n+a.uploadUnit-1)/a.uploadUnit)
		now = int(min(units, int64(b.limit.MaxCost())))
		later = int(min(units-int64(now), int64(b.limit.Limit)))
		return now, later, false
	case n == -1: // chunked
		return 1, 0, true
	}
	return 1, 0, false
}

// bodyUnits is what n bytes of a body without a length cost afterwards,
// beyond the unit taken up front, capped as requestCost says.
func (a *App) bodyUnits(n int64, b *budget) int {
	return int(min(max((n+a.uploadUnit-1)/a.uploadUnit-1, 0), int64(b.limit.Limit)))
}

// charge takes units from key's budget once a request is done, whatever is
// left, so that the principal's next request waits. The client may have
// gone; the charge stands.
func (a *App) charge(ctx context.Context, b *budget, key string, units int) {
	if units <= 0 {
		return
	}
	b.bodyUnits.Add(float64(units))
	if err := a.limiter.Charge(ctx, key, b.limit, units, a.now()); err != nil {
		a.logger.WarnContext(ctx, "rate limits: could not charge a request's body", "units", units, "error", err)
	}
}

// inflight counts each principal's requests in progress. A key is held
// only while it has some, so its size is bounded by the requests the
// gateway is serving.
type inflight struct {
	seed   maphash.Seed
	shards [64]inflightShard
}

type inflightShard struct {
	mu sync.Mutex
	n  map[string]int32
}

func newInflight() *inflight {
	c := &inflight{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].n = map[string]int32{}
	}
	return c
}

func (c *inflight) shard(key string) *inflightShard {
	return &c.shards[maphash.String(c.seed, key)%uint64(len(c.shards))]
}

// acquire counts a request of key in, unless key has limit in progress.
func (c *inflight) acquire(key string, limit int) bool {
	sh := c.shard(key)
	sh.mu.Lock()
	n := sh.n[key]
	ok := int(n) < limit
	if ok {
		sh.n[key] = n + 1
	}
	sh.mu.Unlock()
	return ok
}

// release counts a request of key out.
func (c *inflight) release(key string) {
	sh := c.shard(key)
	sh.mu.Lock()
	if n := sh.n[key]; n > 1 {
		sh.n[key] = n - 1
	} else {
		delete(sh.n, key)
	}
	sh.mu.Unlock()
}

// enter admits a request of key within its budget's concurrency, or
// returns the 429 to answer. A request admitted must leave, whatever way
// it ends (serve defers it, so a client's departure or a panic counts too).
func (a *App) enter(b *budget, key string) error {
	if !a.inflight.acquire(key, b.concurrency) {
		b.concurrencyLimited.Inc()
		he := service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit, "more than %d requests at once", b.concurrency)
		he.RetryAfter = 1 // no time is known when one ends; a second is a polite retry
		return he
	}
	b.inProgress.Inc()
	return nil
}

func (a *App) leave(b *budget, key string) {
	b.inProgress.Dec()
	a.inflight.release(key)
}

// inflightKeys counts the principals with requests in progress.
func (a *App) inflightKeys() int {
	n := 0
	for i := range a.inflight.shards {
		sh := &a.inflight.shards[i]
		sh.mu.Lock()
		n += len(sh.n)
		sh.mu.Unlock()
	}
	return n
}
