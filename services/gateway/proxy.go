package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
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

// bufferPool lends the proxy its copy buffers, so a request does not
// allocate 32 KiB.
type bufferPool struct{ p sync.Pool }

// Get and Put serve httputil.ReverseProxy; the fast path keeps the
// pointer and so spares an allocation per Put.
func (b *bufferPool) Get() []byte   { return *b.get() }
func (b *bufferPool) Put(v []byte)  { b.p.Put(&v) }
func (b *bufferPool) get() *[]byte  { return b.p.Get().(*[]byte) }
func (b *bufferPool) put(v *[]byte) { b.p.Put(v) }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

// newTransport keeps warm, pooled connections to the few upstreams; the
// route's timeout bounds the wait for response headers (bodies such as
// follow streams may last).
func newTransport(headerTimeout time.Duration) *http.Transport {
	return &http.Transport{
		ResponseHeaderTimeout: headerTimeout,
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass bodies through as they are
	}
}

// proxied is what serve decided for a request, for the proxy's Rewrite
// and transport: one context value rather than one per item.
type proxied struct {
	inst   *instance
	claims *auth.Claims
}

type proxiedKey struct{}

func proxiedOf(r *http.Request) *proxied {
	p, _ := r.Context().Value(proxiedKey{}).(*proxied)
	return p
}

// routeProxy is the handler of one route.
type routeProxy struct {
	route   routetable.Route
	pool    *pool
	proxy   *httputil.ReverseProxy // for what the fast path does not carry
	gw      *App
	logger  *slog.Logger
	buffers *bufferPool
	latency prometheus.Observer // upstream time to response headers
	errors  prometheus.Counter  // requests not answered upstream
	// serviceKey signs requests to a Lucid service when the mesh is off
	// (nil with the mesh, and towards the Phase 1 auth service).
	serviceKey []byte
}

func (a *App) newRouteProxy(r routetable.Route, p *pool, transport http.RoundTripper, buffers *bufferPool) *routeProxy {
	rp := &routeProxy{route: r, gw: a, logger: a.logger, pool: p, buffers: buffers,
		latency: a.metrics.upstreamLatency.WithLabelValues(r.Service),
		errors:  a.metrics.upstreamErrors.WithLabelValues(r.Service)}
	rp.proxy = &httputil.ReverseProxy{
		Transport:  &ejectingTransport{base: transport, pool: p, now: a.now, latency: rp.latency},
		BufferPool: buffers,
		// No forced flushing: a response of known length goes out in one
		// write. Streams (follow, audits) have no Content-Length, and
		// ReverseProxy flushes those after every write by itself.
		FlushInterval: 0,
		Rewrite: func(pr *httputil.ProxyRequest) {
			px := proxiedOf(pr.In)
			target := px.inst.url
			pr.SetURL(target)
			// The escaped path, so %2F and %2e stay what they are; a
			// stripped path that climbs out is refused in serve.
			raw := rp.upstreamPath(pr.In, target)
			pr.Out.URL.RawPath = raw
			pr.Out.URL.Path, _ = url.PathUnescape(raw)
			for k := range pr.Out.Header {
				if !rp.passesHeader(k) {
					delete(pr.Out.Header, k)
				}
			}
			rp.forwardHeaders(pr.In, raw, px.claims, pr.Out.Header.Set)
		},
		ModifyResponse: func(resp *http.Response) error {
			// The upstream echoes the request id the gateway gave it; the
			// gateway has set it on the response already.
			resp.Header.Del(service.HeaderRequestID)
			return nil
		},
		ErrorHandler: rp.upstreamFailed,
		ErrorLog:     slog.NewLogLogger(a.logger.Handler(), slog.LevelWarn),
	}
	return rp
}

// keepsAuthorization reports whether the client's Authorization header
// goes upstream. The gateway verifies every token it is shown, and Lucid
// services get the caller in X-Lucid-Sub and X-Lucid-Tier, so they never
// see a client's bearer token. Only the Phase 1 auth service, which issues
// and checks those tokens, gets it.
func (rp *routeProxy) keepsAuthorization() bool { return rp.route.Service == routetable.AuthService }

// gatewaySetHeader reports whether the gateway writes k itself, so a
// client's copy must not reach the upstream.
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

// forwardHeaders gives set each header the gateway writes upstream itself,
// on both proxy paths: the forwarding chain (a client's own kept only
// behind a trusted proxy, so a client cannot plant addresses upstream),
// the original host and scheme, the request ID, the principal and, with
// the mesh off, the gateway's signature over the request to path.
func (rp *routeProxy) forwardHeaders(r *http.Request, path string, claims *auth.Claims, set func(k, v string)) {
	peer := peerHost(r)
	xff := peer
	if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 && rp.gw.isTrusted(peer) {
		xff = strings.Join(prior, ", ") + ", " + peer
	}
	set("X-Forwarded-For", xff)
	set("X-Forwarded-Host", r.Host)
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	set("X-Forwarded-Proto", proto)
	set(service.HeaderRequestID, service.RequestID(r.Context()))
	var p *service.Principal
	if claims != nil {
		p = &service.Principal{Subject: claims.Subject, Tier: claims.Tier}
		set(HeaderSub, claims.Subject)
		set(HeaderTier, string(claims.Tier))
	}
	if rp.serviceKey != nil {
		set(service.HeaderCaller, service.SignCaller(rp.serviceKey, catalog.GatewayService, rp.gw.now(), r.Method, path, p))
	}
}

// upstreamPath is the escaped path r goes to on target: the route's prefix
// stripped if it says so, joined to the target's own path.
func (rp *routeProxy) upstreamPath(r *http.Request, target *url.URL) string {
	p := r.URL.EscapedPath()
	if rp.route.Strip {
		p = strings.TrimPrefix(p, rp.route.Prefix)
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
	}
	return singleJoin(target.EscapedPath(), p)
}

// upstreamFailed answers a request the upstream did not: 504 after a
// timeout, 502 otherwise, and nothing when the client itself went away.
func (rp *routeProxy) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	rp.errors.Inc()
	if r.Context().Err() != nil {
		return // the client went away
	}
	code, status, msg := CodeUpstream, http.StatusBadGateway, "upstream unavailable"
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		code, status, msg = CodeTimeout, http.StatusGatewayTimeout, "upstream timed out"
	}
	he := service.Errorf(status, code, "%s", msg)
	he.Cause = err
	service.WriteError(w, r, rp.logger, he)
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

// ServeHTTP authenticates, rate-limits and proxies one request.
func (rp *routeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := rp.serve(w, r); err != nil {
		service.WriteError(w, r, rp.logger, err)
	}
}

func (rp *routeProxy) serve(w http.ResponseWriter, r *http.Request) error {
	a := rp.gw
	if len(rp.route.Methods) > 0 && !slices.Contains(rp.route.Methods, r.Method) && r.Method != http.MethodOptions {
		return service.Errorf(http.StatusMethodNotAllowed, service.CodeBadRequest, "%s is not allowed here", r.Method)
	}
	if a.cors.preflight(w, r) {
		return nil // never counted, never proxied
	}
	a.cors.headers(w, r)

	if rp.route.Strip && strings.Contains(r.URL.Path, "..") {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the path may not contain \"..\"")
	}
	now := a.now() // once: the token, the budget and the pick see one instant
	var claims *auth.Claims
	if h := r.Header.Get("Authorization"); h != "" || !rp.route.Public {
		c, err := a.authenticate(r, now)
		if err != nil {
			rp.logger.InfoContext(r.Context(), "authentication failed", "reason", err.Error(), "path", r.URL.Path)
			a.metrics.authFailures.Inc()
			// Failed attempts count against the client's address, so
			// guessing tokens is rate limited like anything else.
			b, key := a.principal(r, nil)
			if lerr := a.limit(w, r, b, key, 1, now); lerr != nil {
				return lerr
			}
			return service.Errorf(http.StatusUnauthorized, service.CodeAuth, "invalid or missing token")
		}
		claims = c
	}
	b, key := a.principal(r, claims)
	if err := a.enter(b, key); err != nil {
		return err
	}
	defer a.leave(b, key)
	cost, later, counted := a.requestCost(r, b)
	if err := a.limit(w, r, b, key, cost, now); err != nil {
		return err
	}
	inst, err := rp.pool.pick(now)
	if err != nil {
		he := service.Errorf(http.StatusServiceUnavailable, service.CodeUnready, "no healthy %s instance", rp.route.Service)
		he.Cause = err
		return he
	}
	if fastPath(r) {
		rp.forward(w, r, inst, claims)
		return nil
	}
	if cost > 1 {
		b.bodyUnits.Add(float64(cost - 1))
	}
	rp.proxyBody(w, r, &proxied{inst: inst, claims: claims}, b, key, later, counted)
	return nil
}

// proxyBody proxies a request the fast path does not carry through
// httputil.ReverseProxy, and then charges what its body costs beyond what
// was taken up front: later units, or, for a body without a length, those
// of the bytes that passed. The charge stands however the request ends.
func (rp *routeProxy) proxyBody(w http.ResponseWriter, r *http.Request, px *proxied, b *budget, key string, later int, counted bool) {
	out := r.WithContext(context.WithValue(r.Context(), proxiedKey{}, px))
	if counted {
		body := &countingBody{ReadCloser: r.Body}
		out.Body = body
		defer func() { rp.gw.charge(r, b, key, rp.gw.bodyUnits(body.n.Load(), b)) }()
	} else if later > 0 {
		defer rp.gw.charge(r, b, key, later)
	}
	// The answer may start before the body is all read (a stream, a large
	// answer): without full duplex, the server would close the body under
	// the transport as the answer's headers go out, cutting the request.
	if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
		rp.logger.WarnContext(r.Context(), "full duplex unavailable; a body must be read before the answer starts", "error", err)
	}
	rp.proxy.ServeHTTP(w, out)
}
