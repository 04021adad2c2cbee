package gateway

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/auth"
)

// tokenCache remembers tokens already verified, by their whole text
// (signature included, so a forged token can never hit), until they
// expire or the previous key that signed them retires. Verifying an HS256 token means base64, JSON and HMAC work on
// every request; a client reuses its token for many.
type tokenCache struct {
	seed   maphash.Seed
	shards [32]tokenShard
	max    int // per shard
}

type tokenShard struct {
	mu sync.RWMutex
	m  map[string]cachedToken
}

// cachedToken is a verified token's claims and, when a previous key
// signed it, that key's retirement (else zero).
type cachedToken struct {
	claims *auth.Claims
	until  time.Time
}

func newTokenCache(maxTokens int) *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed(), max: max(maxTokens/32, 16)}
	for i := range c.shards {
		c.shards[i].m = map[string]cachedToken{}
	}
	return c
}

func (c *tokenCache) shard(tok []byte) *tokenShard {
	return &c.shards[maphash.Bytes(c.seed, tok)%uint64(len(c.shards))]
}

// get returns the claims of a verified token that is still within its
// validity window at now (with the same leeway as verification) and whose
// key has not retired.
func (c *tokenCache) get(tok []byte, now time.Time) *auth.Claims {
	sh := c.shard(tok)
	sh.mu.RLock()
	e := sh.m[string(tok)] // no copy: a map index by a converted slice
	sh.mu.RUnlock()
	cl := e.claims
	if cl == nil || (!e.until.IsZero() && !now.Before(e.until)) {
		return nil
	}
	if cl.ExpiresAt == nil || !now.Before(cl.ExpiresAt.Add(auth.Leeway)) {
		return nil
	}
	if cl.NotBefore != nil && now.Before(cl.NotBefore.Add(-auth.Leeway)) {
		return nil
	}
	return cl
}

func (c *tokenCache) put(tok string, cl *auth.Claims, until time.Time) {
	sh := c.shard([]byte(tok))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.m) >= c.max {
		clear(sh.m) // crude but bounded; hot tokens come back at once
	}
	sh.m[tok] = cachedToken{claims: cl, until: until}
}
