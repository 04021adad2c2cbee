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

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// Headers the gateway sets for upstreams. A client's own copies are
// removed first, so they cannot be forged.
const (
	HeaderSub  = "X-Lucid-Sub"
	HeaderTier = "X-Lucid-Tier"
)

// Error codes of the gateway.
const (
	CodeUpstream = "LUCID_ERR_5002"
	CodeTimeout  = "LUCID_ERR_5004"
)

// bufferPool lends the proxy its copy buffers, so a request does not
// allocate 32 KiB.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(v []byte) { b.p.Put(&v) }

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
	route  Route
	pool   *pool
	proxy  *httputil.ReverseProxy
	gw     *App
	logger *slog.Logger
}

func (a *App) newRouteProxy(r Route, p *pool, transport http.RoundTripper, buffers httputil.BufferPool) *routeProxy {
	rp := &routeProxy{route: r, gw: a, logger: a.logger, pool: p}
	rp.proxy = &httputil.ReverseProxy{
		Transport: &retryTransport{base: transport, pool: p, now: a.now,
			latency: a.metrics.upstreamLatency.WithLabelValues(r.Service)},
		BufferPool: buffers,
		// No forced flushing: a response of known length goes out in one
		// write. Streams (follow, audits) have no Content-Length, and
		// ReverseProxy flushes those after every write by itself.
		FlushInterval: 0,
		Rewrite: func(pr *httputil.ProxyRequest) {
			px := proxiedOf(pr.In)
			target := px.inst.url
			pr.SetURL(target)
			if r.Strip {
				// Work on the escaped path so %2F and %2e stay what they
				// are; a stripped path that climbs out is refused in serve.
				p := strings.TrimPrefix(pr.In.URL.EscapedPath(), r.Prefix)
				if !strings.HasPrefix(p, "/") {
					p = "/" + p
				}
				raw := singleJoin(target.EscapedPath(), p)
				pr.Out.URL.RawPath = raw
				pr.Out.URL.Path, _ = url.PathUnescape(raw)
			}
			// Behind a trusted proxy the client's forwarding chain is kept
			// (SetXForwarded then appends the peer); from anyone else it is
			// dropped, so a client cannot plant addresses upstream.
			if a.isTrusted(peerHost(pr.In)) {
				if v := pr.In.Header.Values("X-Forwarded-For"); len(v) > 0 {
					pr.Out.Header["X-Forwarded-For"] = []string{strings.Join(v, ", ")}
				}
			}
			pr.SetXForwarded()
			pr.Out.Header.Set(service.HeaderRequestID, service.RequestID(pr.In.Context()))
			pr.Out.Header.Del(HeaderSub)
			pr.Out.Header.Del(HeaderTier)
			if c := px.claims; c != nil {
				pr.Out.Header.Set(HeaderSub, c.Subject)
				pr.Out.Header.Set(HeaderTier, string(c.Tier))
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			// The upstream echoes the request id the gateway gave it; the
			// gateway has set it on the response already.
			resp.Header.Del(service.HeaderRequestID)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			code, status, msg := CodeUpstream, http.StatusBadGateway, "upstream unavailable"
			var ne net.Error
			if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
				code, status, msg = CodeTimeout, http.StatusGatewayTimeout, "upstream timed out"
			}
			rp.gw.metrics.upstreamErrors.WithLabelValues(r.Service).Inc()
			if errors.Is(err, context.Canceled) && req.Context().Err() != nil {
				return // the client went away
			}
			he := service.Errorf(status, code, "%s", msg)
			he.Cause = err
			service.WriteError(w, req, rp.logger, he)
		},
	}
	return rp
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
	var claims *auth.Claims
	if h := r.Header.Get("Authorization"); h != "" || !rp.route.Public {
		c, err := a.authenticate(r)
		if err != nil {
			rp.logger.InfoContext(r.Context(), "authentication failed", "reason", err.Error(), "path", r.URL.Path)
			a.metrics.authFailures.Inc()
			// Failed attempts count against the client's address, so
			// guessing tokens is rate limited like anything else.
			if lerr := a.limit(w, r, nil); lerr != nil {
				return lerr
			}
			return service.Errorf(http.StatusUnauthorized, service.CodeAuth, "invalid or missing token")
		}
		claims = c
	}
	if err := a.limit(w, r, claims); err != nil {
		return err
	}
	inst, err := rp.pool.pick(a.now())
	if err != nil {
		he := service.Errorf(http.StatusServiceUnavailable, service.CodeUnready, "no healthy %s instance", rp.route.Service)
		he.Cause = err
		return he
	}
	ctx := context.WithValue(r.Context(), proxiedKey{}, &proxied{inst: inst, claims: claims})
	rp.proxy.ServeHTTP(w, r.WithContext(ctx))
	return nil
}
