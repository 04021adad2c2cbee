package gateway

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
)

// Headers the gateway sets for upstreams: the principal (see package
// service). A client's own copies are removed first, so they cannot be
// forged.
const (
	HeaderSub  = service.HeaderSub
	HeaderTier = service.HeaderTier
)

// Error codes of the gateway.
const (
	CodeUpstream = "LUCID_ERR_5002"
	CodeTimeout  = "LUCID_ERR_5004"
)

// routeProxy is the handler of one route.
type routeProxy struct {
	route  routetable.Route
	prefix string // route.Prefix, also the metrics' route label
	pool   *pool
	gw     *App
	logger *slog.Logger
	// methods are the route's allowed methods as bytes; nil allows all.
	methods [][]byte
	latency prometheus.Observer // upstream time to response headers
	errors  prometheus.Counter  // requests not answered upstream
	// signer signs requests to a Lucid service with the service key when
	// the mesh is off (nil with the mesh, and towards the Phase 1 auth
	// service).
	signer *service.CallerSigner
}

func (a *App) newRouteProxy(r routetable.Route, p *pool) *routeProxy {
	rp := &routeProxy{route: r, prefix: r.Prefix, gw: a, logger: a.logger, pool: p,
		latency: a.metrics.upstreamLatency.WithLabelValues(r.Service),
		errors:  a.metrics.upstreamErrors.WithLabelValues(r.Service)}
	for _, m := range r.Methods {
		rp.methods = append(rp.methods, []byte(m))
	}
	return rp
}

// matches reports whether path is the route's prefix or lies under it.
func (rp *routeProxy) matches(path []byte) bool {
	p := rp.prefix
	if p == "/" {
		return true
	}
	if len(path) < len(p) || string(path[:len(p)]) != p {
		return false
	}
	return len(path) == len(p) || path[len(p)] == '/'
}

// allows reports whether the route takes method (OPTIONS always, for CORS
// preflights).
func (rp *routeProxy) allows(method []byte) bool {
	if rp.methods == nil || string(method) == http.MethodOptions {
		return true
	}
	for _, m := range rp.methods {
		if bytes.Equal(m, method) {
			return true
		}
	}
	return false
}

// keepsAuthorization reports whether the client's Authorization header
// goes upstream. The gateway verifies every token it is shown, and Lucid
// services get the caller in X-Lucid-Sub and X-Lucid-Tier, so they never
// see a client's bearer token. Only the Phase 1 auth service, which issues
// and checks those tokens, gets it.
func (rp *routeProxy) keepsAuthorization() bool { return rp.route.Service == routetable.AuthService }

// gatewaySetHeader reports whether the gateway writes k (canonical) itself,
// so a client's copy must not reach the upstream.
func gatewaySetHeader(k string) bool {
	switch k {
	case "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded",
		service.HeaderRequestID, HeaderSub, HeaderTier, service.HeaderCaller, "Host":
		return true
	}
	return false
}

// passesHeader reports whether a client's end-to-end header k goes
// upstream as it came: not one the gateway writes itself, and not the
// bearer token, except to the auth service.
func (rp *routeProxy) passesHeader(k string) bool {
	return !gatewaySetHeader(k) && (k != "Authorization" || rp.keepsAuthorization())
}

// forwardHeaders gives set each header the gateway writes upstream itself:
// the forwarding chain (a client's own kept only behind a trusted proxy,
// so a client cannot plant addresses upstream), the original host and
// scheme, the request ID, the principal and, with the mesh off, the
// gateway's signature over the request to path.
func (rp *routeProxy) forwardHeaders(c *call, path string, claims *auth.Claims, h *fasthttp.RequestHeader) {
	fc := c.fc
	var peerBuf [64]byte
	xff := appendPeer(peerBuf[:0], fc)
	if prior := fc.Request.Header.PeekAll("X-Forwarded-For"); len(prior) > 0 && rp.gw.isTrusted(string(xff)) {
		xff = append(append(bytes.Join(prior, []byte(", ")), ", "...), xff...)
	}
	// Canonical names, set as they are: no normalising on every request.
	h.SetCanonical(keyForwardedFor, xff)
	h.SetCanonical(keyForwardedHost, fc.Host())
	if fc.IsTLS() {
		h.SetCanonical(keyForwardedProto, valueHTTPS)
	} else {
		h.SetCanonical(keyForwardedProto, valueHTTP)
	}
	h.SetCanonical(keyRequestID, []byte(c.id))
	var p *service.Principal
	if claims != nil {
		p = &service.Principal{Subject: claims.Subject, Tier: claims.Tier}
		h.SetCanonical(keySub, []byte(claims.Subject))
		h.SetCanonical(keyTier, []byte(claims.Tier))
	}
	if rp.signer != nil {
		var buf [160]byte // a signature's value fits: caller, time and 64 hex digits
		h.SetCanonical(keyCaller, rp.signer.AppendSign(buf[:0], rp.gw.now(), string(fc.Method()), path, p))
	}
}

// The headers forwardHeaders writes, canonical.
var (
	keyForwardedFor   = []byte("X-Forwarded-For")
	keyForwardedHost  = []byte("X-Forwarded-Host")
	keyForwardedProto = []byte("X-Forwarded-Proto")
	keyRequestID      = []byte(service.HeaderRequestID)
	keySub            = []byte(HeaderSub)
	keyTier           = []byte(HeaderTier)
	keyCaller         = []byte(service.HeaderCaller)
	valueHTTP         = []byte("http")
	valueHTTPS        = []byte("https")
)

// upstreamPath is the escaped path a request for raw goes to on target:
// the route's prefix stripped if it says so, joined to the target's own
// path.
func (rp *routeProxy) upstreamPath(raw string, target *url.URL) string {
	p := raw
	if rp.route.Strip {
		p = strings.TrimPrefix(p, rp.route.Prefix)
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
	}
	return canonicalPath(singleJoin(target.EscapedPath(), p))
}

// canonicalPath is the escaped path p as a Go service reads it back
// (url.URL.EscapedPath): each byte a path may not carry raw ("|", "{", a
// quote, non-ASCII) escaped where it stands, the rest, escapes included
// ("%2F" stays "%2F"), as sent. The gateway forwards and signs that form,
// so that a service checking the signature over the path it got sees
// the path that was signed; browsers send "|" raw.
func canonicalPath(p string) string {
	i := 0
	for i < len(p) && keptInPath[p[i]] {
		i++
	}
	if i == len(p) {
		return p // as a path nearly always is
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(p)+8)
	out = append(out, p[:i]...)
	for _, c := range []byte(p[i:]) {
		if keptInPath[c] {
			out = append(out, c)
		} else {
			out = append(out, '%', hex[c>>4], hex[c&15])
		}
	}
	return string(out)
}

// plainPath is the escaped path raw with each escaped unreserved byte
// (a letter, a digit, "-", ".", "_", "~") written plainly, as RFC 3986
// 6.2.2.2 normalises it and as a service's ServeMux reads it: the route is
// chosen, and the path forwarded and signed, as the service will see it.
// Matched as sent, /api/v1/%63hain would miss the route of /api/v1/chain
// and reach the same service through a shorter route, under that route's
// policy (public, or other methods). A route's prefix holds only
// unreserved bytes and "/" (package routetable), so the escapes left in
// place cannot hide one. raw itself is returned when nothing changes, as
// for nearly every path.
func plainPath(raw []byte) []byte {
	i := bytes.IndexByte(raw, '%')
	for i >= 0 && !escapedUnreserved(raw[i:]) {
		j := bytes.IndexByte(raw[i+1:], '%')
		if j < 0 {
			return raw
		}
		i += 1 + j
	}
	if i < 0 {
		return raw
	}
	out := make([]byte, 0, len(raw))
	out = append(out, raw[:i]...)
	for ; i < len(raw); i++ {
		if raw[i] == '%' && escapedUnreserved(raw[i:]) {
			out = append(out, unhex(raw[i+1])<<4|unhex(raw[i+2]))
			i += 2
			continue
		}
		out = append(out, raw[i])
	}
	return out
}

// escapedUnreserved reports whether p starts with an escape ("%" and two
// hex digits, either case) of an unreserved byte.
func escapedUnreserved(p []byte) bool {
	if len(p) < 3 || p[0] != '%' || !isHex(p[1]) || !isHex(p[2]) {
		return false
	}
	c := unhex(p[1])<<4 | unhex(p[2])
	return c < 0x80 && unreserved[c]
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// unreserved are RFC 3986's unreserved bytes.
var unreserved = func() (t [128]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~") {
		t[c] = true
	}
	return t
}()

// keptInPath are the bytes EscapedPath leaves as they are: unreserved,
// sub-delims, ":", "@", "/", "[", "]" and the escapes' "%".
var keptInPath = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/[]%") {
		t[c] = true
	}
	return t
}()

// upstreamFailed is the answer to a request the upstream did not answer:
// 504 after a timeout, 502 otherwise.
func (rp *routeProxy) upstreamFailed(err error) error {
	rp.errors.Inc()
	code, status, msg := CodeUpstream, http.StatusBadGateway, "upstream unavailable"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		code, status, msg = CodeTimeout, http.StatusGatewayTimeout, "upstream timed out"
	}
	he := service.Errorf(status, code, "%s", msg)
	he.Cause = err
	return he
}

func singleJoin(a, b string) string {
	switch {
	case a == "" || a == "/":
		return b
	case strings.HasSuffix(a, "/"):
		return a + strings.TrimPrefix(b, "/")
	}
	return a + b
}

// internalPaths are a service's own endpoints that describe its insides
// (process, build, its checks' errors): the operator's and its monitor's.
// /health, a bare liveness answer, a route may expose (an uptime check).
var internalPaths = [][]byte{[]byte("/ready"), []byte("/metrics")}

// reachesOwnEndpoint reports whether the route would send raw to the
// service's readiness or metrics, which are not a user's: through a
// stripped prefix, or through the catch-all route "/", which gets what
// the gateway's own endpoints do not (an escaped /%6Detrics).
func (rp *routeProxy) reachesOwnEndpoint(raw []byte) bool {
	catchAll := rp.route.Prefix == "/"
	if !rp.route.Strip && !catchAll {
		return false // the path keeps a prefix no endpoint of a service has
	}
	p := raw
	if !catchAll {
		p = bytes.TrimPrefix(raw, []byte(rp.route.Prefix))
	}
	if bytes.IndexByte(p, '%') >= 0 {
		// The service matches the unescaped path: /%6Detrics is /metrics.
		u, err := url.PathUnescape(string(p))
		if err != nil {
			return true // nothing to serve a user
		}
		p = []byte(u)
	}
	for _, own := range internalPaths {
		if bytes.Equal(p, own) || (len(p) > len(own) && bytes.HasPrefix(p, own) && p[len(own)] == '/') {
			return true
		}
	}
	return false
}

// climbs reports whether an escaped path holds a ".." segment, spelt
// plainly or escaped.
func climbs(raw []byte) bool {
	if bytes.Contains(raw, []byte("..")) {
		return true
	}
	if bytes.IndexByte(raw, '%') < 0 {
		return false
	}
	p, err := url.PathUnescape(string(raw))
	return err != nil || strings.Contains(p, "..")
}

// serve authenticates, rate-limits and proxies one request. It reports
// whether the answer streams on after it returns.
func (rp *routeProxy) serve(c *call) (streaming bool, err error) {
	a, fc := rp.gw, c.fc
	if !rp.allows(fc.Method()) {
		return false, service.Errorf(http.StatusMethodNotAllowed, service.CodeBadRequest, "%s is not allowed here", fc.Method())
	}
	if a.cors.preflight(fc) {
		return false, nil // never counted, never proxied
	}
	a.cors.headers(fc)
	if len(fc.Request.Header.Peek("Upgrade")) > 0 {
		// No Lucid service switches protocols; the gateway carries HTTP/1.1.
		return false, service.Errorf(http.StatusNotImplemented, service.CodeBadRequest, "protocol upgrades are not supported")
	}
	if n := bodyLength(&fc.Request.Header); n > maxBodyBytes {
		return false, service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "a request body is at most %d MiB", maxBodyBytes>>20)
	}
	raw := c.path
	// Every route, not only a stripped one: another route's prefix may
	// lead to the same upstream under another policy (public or not),
	// and an upstream that resolves ".." itself would serve it.
	if climbs(raw) {
		return false, service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the path may not contain \"..\"")
	}
	if rp.reachesOwnEndpoint(raw) {
		return false, service.Errorf(http.StatusNotFound, service.CodeNotFound, "no such endpoint")
	}
	now := a.now() // once: the token, the budget and the pick see one instant
	var claims *auth.Claims
	if h := fc.Request.Header.Peek("Authorization"); len(h) > 0 || !rp.route.Public {
		cl, err := a.authenticate(h, now)
		if err != nil && rp.route.Public && rp.keepsAuthorization() {
			// The auth service judges the tokens it issues, a stale one
			// too (a refresh, a logout): the request goes on as an
			// anonymous one, with its header.
			cl, err = nil, nil
		}
		if err != nil {
			rp.logger.InfoContext(c.ctx, "authentication failed", "reason", err.Error(), "path", service.LogPath(string(fc.URI().PathOriginal())))
			a.metrics.authFailures.Inc()
			// Failed attempts count against the client's address, so
			// guessing tokens is rate limited like anything else.
			b, key := a.principal(fc, nil)
			if lerr := a.limit(c.ctx, fc, b, key, 1, now); lerr != nil {
				return false, lerr
			}
			return false, service.Errorf(http.StatusUnauthorized, service.CodeAuth, "invalid or missing token")
		}
		claims = cl
	}
	b, key := a.principal(fc, claims)
	if err := a.enter(b, key); err != nil {
		return false, err
	}
	c.budget, c.key, c.entered = b, key, true
	cost, later, counted := a.requestCost(fc, b)
	if err := a.limit(c.ctx, fc, b, key, cost, now); err != nil {
		return false, err
	}
	if cost > 1 {
		b.bodyUnits.Add(float64(cost - 1))
	}
	c.later = later
	inst, err := rp.pool.pick(now)
	if err != nil {
		he := service.Errorf(http.StatusServiceUnavailable, service.CodeUnready, "no healthy %s instance", rp.route.Service)
		he.Cause = err
		return false, he
	}
	return rp.forward(c, inst, claims, counted)
}

// proxyRequest writes into req what goes upstream for c: the method, the
// target's path and query, the upstream's Host, the client's end-to-end
// headers, and the gateway's own forwarding, request-ID and identity
// headers. Hop-by-hop headers, and those the Connection header names, stay
// behind.
func (rp *routeProxy) proxyRequest(c *call, req *fasthttp.Request, target *url.URL, claims *auth.Claims) {
	fc := c.fc
	in := &fc.Request.Header
	out := &req.Header
	out.SetMethodBytes(in.Method())
	path := rp.upstreamPath(string(c.path), target)
	uri := path
	if q := joinQuery(target.RawQuery, string(fc.URI().QueryString())); q != "" {
		uri += "?" + q
	}
	out.SetRequestURI(uri)
	out.SetHost(target.Host)
	conn := connectionTokens(in.Peek("Connection"))
	for k, v := range in.All() {
		ks := string(k) // the compiler does not copy for these comparisons
		if hopHeader(ks) || ks == "Content-Length" || !rp.passesHeader(ks) || (conn != nil && slices.Contains(conn, ks)) {
			continue
		}
		if bytes.IndexByte(k, '_') >= 0 || bytes.IndexByte(k, ' ') >= 0 {
			// As nginx by default: a CGI-style upstream reads X_Lucid_Sub,
			// or X-Lucid Sub, as X-Lucid-Sub, which the gateway alone may
			// set.
			continue
		}
		out.AddBytesKV(k, v)
	}
	// A client may say it accepts trailers; nothing else of TE is ours
	// to pass on.
	if hasToken(in.PeekAll("Te"), "trailers") {
		out.Set("Te", "trailers")
	}
	rp.forwardHeaders(c, path, claims, out)
}

// hopHeader reports whether k (canonical) is a hop-by-hop header (RFC
// 9110 7.6.1), which a proxy never forwards.
func hopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// connectionTokens lists, canonical, the headers a Connection header names
// as hop-by-hop too; nil when there are none, as for most messages.
func connectionTokens(v []byte) []string {
	if len(v) == 0 {
		return nil
	}
	var out []string
	for t := range strings.SplitSeq(string(v), ",") {
		if t = strings.TrimSpace(t); t != "" && !strings.EqualFold(t, "close") && !strings.EqualFold(t, "keep-alive") {
			out = append(out, http.CanonicalHeaderKey(t))
		}
	}
	return out
}

// hasToken reports whether a comma-separated header holds token.
func hasToken(values [][]byte, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(string(v), ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// joinQuery joins a target's query and a request's, as ReverseProxy does.
func joinQuery(target, in string) string {
	if target == "" || in == "" {
		return target + in
	}
	return target + "&" + in
}
