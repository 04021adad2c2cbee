package gateway

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/ratelimit"
	"github.com/pickme/lucid/pkg/service"
)

// maxAuthHeader bounds the Authorization header: a JWT of Lucid's claims
// is a few hundred bytes.
const maxAuthHeader = 4096

// authenticate verifies the bearer token; the error is for the log only.
func (a *App) authenticate(r *http.Request, now time.Time) (*auth.Claims, error) {
	h := r.Header.Get("Authorization")
	switch {
	case h == "":
		return nil, errors.New("no Authorization header")
	case len(h) > maxAuthHeader:
		return nil, fmt.Errorf("an Authorization header of %d bytes", len(h))
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, errors.New("not a Bearer token")
	}
	tok = strings.TrimSpace(tok)
	if c := a.tokens.get(tok, now); c != nil {
		return c, nil
	}
	c, until, err := a.keys.Parse(tok, func() time.Time { return now }, a.verify...)
	if err != nil {
		return nil, err
	}
	a.tokens.put(tok, &c, until)
	return &c, nil
}

// clientIP is the address the request came from; X-Forwarded-For counts
// only when the direct peer is a trusted proxy, and then the rightmost
// address not itself trusted is the client.
func (a *App) clientIP(r *http.Request) string {
	host := peerHost(r)
	if !a.isTrusted(host) {
		return host
	}
	// All X-Forwarded-For lines, in order: a client's own line comes
	// first, the trusted proxy's last, and only the tail is believed.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		ip := strings.TrimSpace(hops[i])
		if net.ParseIP(ip) == nil {
			break
		}
		if !a.isTrusted(ip) {
			return ip
		}
	}
	return host
}

// clientKey is the rate-limit key of an anonymous client: its IPv4
// address, or the /64 prefix of its IPv6 address. An IPv6 host is given a
// whole /64 (SLAAC, privacy addresses) and may rotate through it at will,
// so keying by address would give it 2^64 budgets. An IPv4-mapped address
// (::ffff:192.0.2.1, from a dual-stack listener) is its IPv4 address.
func (a *App) clientKey(r *http.Request) string {
	s := a.clientIP(r)
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Is4() {
		return "ip:" + s
	}
	var buf [64]byte // one allocation, the key itself, as for IPv4
	k := append(buf[:0], "ip:"...)
	if ip.Is4In6() {
		k = ip.Unmap().AppendTo(k)
	} else {
		p, _ := ip.WithZone("").Prefix(64)
		k = p.AppendTo(k)
	}
	return string(k)
}

// peerHost is the address of the direct peer.
func peerHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (a *App) isTrusted(s string) bool {
	ip := net.ParseIP(s)
	if ip == nil {
		return false
	}
	for _, n := range a.trusted {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// principal is whom a request's limits apply to: its tier's budget and
// its key, by sub, or the free tier by client address (clientKey).
func (a *App) principal(r *http.Request, c *auth.Claims) (*budget, string) {
	if c != nil {
		return a.budgets[c.Tier], "sub:" + c.Subject
	}
	return a.budgets[auth.TierFree], a.clientKey(r)
}

// limit takes n units (requestCost) from key's budget b. It sets the
// RateLimit-* headers and, when refused, answers 429 with Retry-After.
func (a *App) limit(w http.ResponseWriter, r *http.Request, b *budget, key string, n int, now time.Time) error {
	d, err := a.limiter.AllowN(r.Context(), key, b.limit, n, now)
	if err != nil {
		// Redis without a fallback (LUCID_RATE_LIMIT_ON_ERROR=closed), or
		// a client that has gone: never a pass without a limit.
		b.errored.Inc()
		he := service.Errorf(http.StatusServiceUnavailable, service.CodeRateLimit, "rate limiting is unavailable; try again shortly")
		he.Cause = err
		return he
	}
	// Canonical keys and one backing array: this runs on every request.
	vals := make([]string, 3)
	vals[0], vals[1], vals[2] = b.limitText, strconv.Itoa(d.Remaining), strconv.Itoa(int(math.Ceil(d.Reset.Seconds())))
	hdr := w.Header()
	hdr["Ratelimit-Limit"] = vals[0:1:1]
	hdr["Ratelimit-Remaining"] = vals[1:2:2]
	hdr["Ratelimit-Reset"] = vals[2:3:3]
	if d.Allowed {
		b.allowed.Inc()
		return nil
	}
	b.limited.Inc()
	hdr.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(d.RetryAfter.Seconds())))))
	if n > 1 {
		return service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit, "rate limit of %d requests per minute exceeded (this request's body counts it as %d)", b.limit.Limit, n)
	}
	return service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit, "rate limit of %d requests per minute exceeded", b.limit.Limit)
}

// budget is one tier's limits with their header text and metrics,
// resolved once rather than per request.
type budget struct {
	limit                     ratelimit.Limit
	limitText                 string
	allowed, limited, errored prometheus.Counter
	// bodyUnits counts the units charged for request bodies.
	bodyUnits prometheus.Counter
	// concurrency bounds a principal's requests in progress at this
	// gateway; inProgress and concurrencyLimited meter it.
	concurrency        int
	inProgress         prometheus.Gauge
	concurrencyLimited prometheus.Counter
}

func newBudgets(limits map[auth.Tier]ratelimit.Limit, concurrency map[auth.Tier]int, m *metrics) map[auth.Tier]*budget {
	out := map[auth.Tier]*budget{}
	for tier, l := range limits {
		t := string(tier)
		out[tier] = &budget{
			limit: l, limitText: strconv.Itoa(l.Limit),
			allowed:            m.decisions.WithLabelValues(t, "allowed"),
			limited:            m.decisions.WithLabelValues(t, "limited"),
			errored:            m.decisions.WithLabelValues(t, "error"),
			bodyUnits:          m.bodyUnits.WithLabelValues(t),
			concurrency:        concurrency[tier],
			inProgress:         m.inProgress.WithLabelValues(t),
			concurrencyLimited: m.concurrencyLimited.WithLabelValues(t),
		}
	}
	return out
}

// cors answers preflights and marks responses for the configured origins.
type cors struct {
	any     bool
	origins map[string]bool
}

func newCORS(spec string) cors {
	c := cors{origins: map[string]bool{}}
	for _, o := range strings.Split(spec, ",") {
		switch o = strings.TrimSpace(o); o {
		case "":
		case "*":
			c.any = true
		default:
			c.origins[o] = true
		}
	}
	return c
}

func (c cors) allowed(origin string) bool { return origin != "" && (c.any || c.origins[origin]) }

// preflight answers an OPTIONS preflight itself; it reports whether it did.
func (c cors) preflight(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	origin := r.Header.Get("Origin")
	if c.allowed(origin) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, HEAD, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-ID")
		h.Set("Access-Control-Max-Age", "600")
		h.Add("Vary", "Origin")
	}
	w.WriteHeader(http.StatusNoContent)
	return true
}

func (c cors) headers(w http.ResponseWriter, r *http.Request) {
	if origin := r.Header.Get("Origin"); c.allowed(origin) {
		w.Header().Set("Access-Control-Allow-Origin", origin)
		w.Header().Set("Access-Control-Expose-Headers", "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-ID")
		w.Header().Add("Vary", "Origin")
	}
}
