package gateway

import (
	"bytes"
	"context"
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
	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/ratelimit"
	"github.com/pickme/lucid/pkg/service"
)

// maxAuthHeader bounds the Authorization header: a JWT of Lucid's claims
// is a few hundred bytes.
const maxAuthHeader = 4096

// authenticate verifies the bearer token in the Authorization header h;
// the error is for the log only.
func (a *App) authenticate(h []byte, now time.Time) (*auth.Claims, error) {
	switch {
	case len(h) == 0:
		return nil, errors.New("no Authorization header")
	case len(h) > maxAuthHeader:
		return nil, fmt.Errorf("an Authorization header of %d bytes", len(h))
	}
	raw, ok := bytes.CutPrefix(h, []byte("Bearer "))
	if !ok {
		return nil, errors.New("not a Bearer token")
	}
	raw = bytes.TrimSpace(raw)
	if c := a.tokens.get(raw, now); c != nil {
		return c, nil
	}
	tok := string(raw)
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
func (a *App) clientIP(fc *fasthttp.RequestCtx) string {
	host := peerHost(fc)
	if !a.isTrusted(host) {
		return host
	}
	// All X-Forwarded-For lines, in order: a client's own line comes
	// first, the trusted proxy's last, and only the tail is believed.
	hops := strings.Split(string(bytes.Join(fc.Request.Header.PeekAll("X-Forwarded-For"), []byte(","))), ",")
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
func (a *App) clientKey(fc *fasthttp.RequestCtx) string {
	s := a.clientIP(fc)
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

// appendPeer appends peerHost's address to dst, which for a TCP peer
// takes no allocation.
func appendPeer(dst []byte, fc *fasthttp.RequestCtx) []byte {
	if tcp, ok := fc.RemoteAddr().(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(tcp.IP); ok {
			return ip.Unmap().AppendTo(dst)
		}
	}
	return append(dst, peerHost(fc)...)
}

// peerHost is the address of the direct peer.
func peerHost(fc *fasthttp.RequestCtx) string {
	if tcp, ok := fc.RemoteAddr().(*net.TCPAddr); ok {
		if ip4 := tcp.IP.To4(); ip4 != nil {
			return ip4.String()
		}
		return tcp.IP.String()
	}
	addr := fc.RemoteAddr().String()
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// viaTrustedProxy reports whether the request's direct peer is a trusted
// proxy, whose X-Request-ID the gateway keeps. Anyone else's is replaced:
// a client could otherwise give its requests another's ID, in every log
// line and error body that follows it.
func (a *App) viaTrustedProxy(fc *fasthttp.RequestCtx) bool {
	if len(a.trusted) == 0 {
		return false
	}
	tcp, ok := fc.RemoteAddr().(*net.TCPAddr)
	return ok && a.trustedIP(tcp.IP)
}

func (a *App) isTrusted(s string) bool { return a.trustedIP(net.ParseIP(s)) }

// trustedIP reports whether ip (nil for none) is in LUCID_TRUSTED_PROXIES;
// an IPv4-mapped address matches as the IPv4 one.
func (a *App) trustedIP(ip net.IP) bool {
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
func (a *App) principal(fc *fasthttp.RequestCtx, c *auth.Claims) (*budget, string) {
	if c != nil {
		return a.budgets.Of(c.Tier), "sub:" + c.Subject
	}
	return a.budgets.Of(auth.TierFree), a.clientKey(fc)
}

// limit takes n units (requestCost) from key's budget b. It sets the
// RateLimit-* headers and, when refused, answers 429 with Retry-After.
func (a *App) limit(ctx context.Context, fc *fasthttp.RequestCtx, b *budget, key string, n int, now time.Time) error {
	d, err := a.limiter.AllowN(ctx, key, b.limit, n, now)
	if err != nil {
		// Redis without a fallback (LUCID_RATE_LIMIT_ON_ERROR=closed), or
		// a client that has gone: never a pass without a limit.
		b.errored.Inc()
		he := service.Errorf(http.StatusServiceUnavailable, service.CodeRateLimit, "rate limiting is unavailable; try again shortly")
		he.Cause = err
		return he
	}
	hdr := &fc.Response.Header
	hdr.Set("RateLimit-Limit", b.limitText)
	var buf [20]byte // the values are copied: no allocation for them
	hdr.SetBytesV("RateLimit-Remaining", strconv.AppendInt(buf[:0], int64(d.Remaining), 10))
	hdr.SetBytesV("RateLimit-Reset", strconv.AppendInt(buf[:0], int64(math.Ceil(d.Reset.Seconds())), 10))
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

// ownBudget is free's limit for the gateway's own endpoints, its
// decisions counted as tier "own", not as the free tier's API traffic.
func ownBudget(free *budget, m *metrics) *budget {
	return &budget{
		limit: free.limit, limitText: free.limitText,
		allowed: m.decisions.WithLabelValues("own", "allowed"),
		limited: m.decisions.WithLabelValues("own", "limited"),
		errored: m.decisions.WithLabelValues("own", "error"),
	}
}

func newBudgets(limits auth.PerTier[ratelimit.Limit], concurrency auth.PerTier[int], m *metrics) auth.PerTier[*budget] {
	out := auth.PerTier[*budget]{}
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
func (c cors) preflight(fc *fasthttp.RequestCtx) bool {
	if !fc.IsOptions() || len(fc.Request.Header.Peek("Access-Control-Request-Method")) == 0 {
		return false
	}
	origin := string(fc.Request.Header.Peek("Origin"))
	if c.allowed(origin) {
		h := &fc.Response.Header
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, HEAD, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-ID")
		h.Set("Access-Control-Max-Age", "600")
		h.Add("Vary", "Origin")
	}
	fc.SetStatusCode(http.StatusNoContent)
	return true
}

func (c cors) headers(fc *fasthttp.RequestCtx) {
	if c.any || len(c.origins) > 0 {
		if origin := string(fc.Request.Header.Peek("Origin")); c.allowed(origin) {
			h := &fc.Response.Header
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Expose-Headers", "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After, X-Request-ID")
			h.Add("Vary", "Origin")
		}
	}
}
