package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/edgetls"
	"github.com/pickme/lucid/pkg/quietconn"
	"github.com/pickme/lucid/pkg/service"
)

// The gateway serves its listener with fasthttp rather than net/http:
// every request of a Pi passes here, and net/http's server alone caps a
// proxy well below nginx on the same cores (docs/gateway.md). What the
// other services get from package service's middleware (request IDs, the
// access log, request metrics, panic recovery, JSON errors) the gateway
// does itself on this path, with the same names and shapes; its own
// endpoints (/health, /ready, /metrics) are still the service's handler.

// Server limits. A request's headers must arrive within headerTimeout
// (slowloris); a body (a 16 MiB chunk from a Pi on Wi-Fi) within
// bodyTimeout. There is no write timeout: follow streams are long-lived by
// design, and the services cut off readers that stop reading.
const (
	headerTimeout = 5 * time.Second
	bodyTimeout   = 2 * time.Minute
	idleTimeout   = 2 * time.Minute
	// maxHeaderBytes bounds a request line and its headers, as nginx's
	// default does (a token is at most 4 KiB). It is the size of each
	// connection's read buffer, which fasthttp keeps for the connection's
	// life when bodies stream (as here), until the connection is parked
	// while idle (idlepark.go).
	maxHeaderBytes = 8 << 10
	// maxBodyBytes bounds a request body, well above the data chain's
	// largest chunk (16 MiB); bodies stream through, never held whole.
	// fasthttp streams a larger one rather than refuse it, so the proxy
	// checks it itself (routeProxy.serve, clientBody).
	maxBodyBytes = 64 << 20
	// maxOwnBodyBytes bounds the body of a request the gateway answers
	// itself: its health, readiness and metrics, and the 404 of a path no
	// route claims. None reads a body, but package service's handler, through
	// fasthttp's adaptor, would hold one whole, with no token asked.
	maxOwnBodyBytes = 64 << 10
)

// ownPaths are the gateway's own endpoints, served by package service's
// handler; the route table may not claim them.
var ownPaths = [][]byte{[]byte("/health"), pathReady, pathMetrics}

// ServeOn serves ln until ctx ends: the routes through the proxy, the rest
// through srv's handler. Then it drains for up to the shutdown timeout.
func (a *App) ServeOn(ctx context.Context, ln net.Listener, srv *service.Server) error {
	a.srv = srv
	a.own = fasthttpadaptor.NewFastHTTPHandler(srv.Handler())
	a.inFlight = srv.InFlight()
	fs := &fasthttp.Server{
		Handler:                      a.handle,
		ReadTimeout:                  headerTimeout,
		IdleTimeout:                  idleTimeout,
		HeaderReceived:               receivedHeaders,
		ReadBufferSize:               maxHeaderBytes,
		MaxRequestBodySize:           maxBodyBytes,
		StreamRequestBody:            true,
		ReduceMemoryUsage:            true, // idle connections hold no buffers
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
		// A malformed request's error quotes no bytes of it, which may
		// hold a token.
		SecureErrorLogMessage: true,
		Logger:                fasthttpLogger{a.logger},
	}
	cfg := srv.Config()
	scheme := "http"
	ln = quietconn.Listener(ln) // under TLS, if any
	// One bound for the connections of both listeners, the main one and
	// the plain-HTTP port.
	limit := newConnLimit(a.connsPerAddr, a.conns, a.isTrusted, a.metrics.connsRefused)
	if a.tls.Enabled() {
		edge, stopPlain, err := a.startEdge(ctx, srv, limit)
		if err != nil {
			_ = ln.Close()
			return err
		}
		defer func() { stopPlain(); _ = edge.Close() }()
		ln = tls.NewListener(ln, edge.TLSConfig())
		if v := edge.HSTS(); v != "" { // none at all with a max-age of 0
			a.hsts = []byte(v)
		}
		scheme = "https"
	}
	pk := newParker(fs.ServeConn, a.metrics.parked)
	pk.limit = limit
	if a.sendTimeout > 0 {
		pk.send = a.sendTimeout
	}
	fs.ConnState = pk.connState
	ln = admittingListener{Listener: ln, admit: pk.wrap}
	bi := buildinfo.Read()
	a.logger.Info("serving", "addr", ln.Addr().String(), "scheme", scheme, "version", bi.Version, "commit", bi.Commit)

	errc := make(chan error, 1)
	go func() { errc <- fs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	srv.Drain()
	pk.close() // before fasthttp's shutdown, which knows nothing of them
	a.logger.Info("shutting down", "deadline", cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err := fs.ShutdownWithContext(sctx)
	if err == nil {
		err = pk.drain(sctx)
	}
	// Shutdown closes only listeners Serve has taken up, and Serve may
	// not have started yet.
	_ = ln.Close()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("shutdown: requests still running after %s were cut off", cfg.ShutdownTimeout)
		}
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	a.logger.Info("stopped")
	return nil
}

// startEdge starts the public edge's TLS (certificate files, or ACME) and
// its plain-HTTP listener, which answers ACME HTTP-01 challenges and
// redirects everything else to HTTPS; limit bounds its connections with
// the main listener's. Certificates that cannot be loaded are a
// configuration error.
func (a *App) startEdge(ctx context.Context, srv *service.Server, limit *connLimit) (*edgetls.Edge, func(), error) {
	var lc net.ListenConfig
	pln, err := lc.Listen(ctx, "tcp", a.tls.HTTPAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s (%s): %w", a.tls.HTTPAddr, edgetls.EnvHTTPAddr, err)
	}
	edge, err := edgetls.Start(ctx, a.tls, a.logger, srv.Registerer())
	if err != nil {
		_ = pln.Close()
		return nil, nil, &service.ConfigError{Service: "gateway", Err: err}
	}
	// Nothing on this port reads a body, and a client's whole request
	// must come within the header timeout: net/http would otherwise wait
	// without end for a body it means to drop. Its answer is small, and
	// a client it redirects goes elsewhere: an idle connection is kept no
	// longer than a request may take.
	plain := &http.Server{
		Handler:           edge.PlainHandler(),
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       headerTimeout,
		WriteTimeout:      2 * headerTimeout,
		IdleTimeout:       headerTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.logger.Handler(), slog.LevelWarn),
	}
	go func() { _ = plain.Serve(admittingListener{Listener: pln, admit: limit.counted}) }() // ends with Close
	a.logger.Info("serving plain HTTP for ACME challenges and redirects to HTTPS", "addr", pln.Addr().String())
	return edge, func() { _ = plain.Close() }, nil
}

// receivedHeaders gives a request with a body the body's time: the header
// timeout ends once the headers are in.
func receivedHeaders(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if bodyLength(h) != 0 {
		return fasthttp.RequestConfig{ReadTimeout: bodyTimeout}
	}
	return fasthttp.RequestConfig{}
}

// fasthttpLogger sends fasthttp's own messages (malformed requests,
// connections it gave up on) to the service log as warnings, without the
// request's bytes.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Warn(redactQuoted(fmt.Sprintf(format, args...)))
}

// quoted matches a string quoted as %q quotes it.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// redactQuoted replaces every quoted string in msg with "…", but for the
// connection's addresses. SecureErrorLogMessage drops only fasthttp's dump
// of its buffer: its parse errors still quote what they failed on (a
// header's value, a whole request line and the headers after it), which
// may be a bearer token or a cookie.
func redactQuoted(msg string) string {
	return quoted.ReplaceAllStringFunc(msg, func(q string) string {
		if s, err := strconv.Unquote(q); err == nil {
			if _, err := netip.ParseAddrPort(s); err == nil {
				return q
			}
		}
		return `"…"`
	})
}

// sortRoutes orders the route handlers longest prefix first, so the first
// match is the longest.
func sortRoutes(rps []*routeProxy) {
	sort.SliceStable(rps, func(i, j int) bool { return len(rps[i].prefix) > len(rps[j].prefix) })
}

// routeFor is the route of path (raw, plainPath): the longest prefix it
// equals or lies under; nil for none and for the gateway's own endpoints,
// which are matched as sent (an escaped /%6Detrics is a route's path, and
// reachesOwnEndpoint keeps it from the service's own).
func (a *App) routeFor(raw, path []byte) *routeProxy {
	for _, p := range ownPaths {
		if bytes.Equal(raw, p) {
			return nil
		}
	}
	for _, rp := range a.proxies {
		if rp.matches(path) {
			return rp
		}
	}
	return nil
}

// call is one request through the proxy: what its handler decided, and
// what must happen when it ends, which for a streamed answer is after the
// handler has returned. Calls are pooled.
type call struct {
	fc  *fasthttp.RequestCtx
	ctx context.Context // carries the request ID, for the log and Redis: &rctx
	// rctx is ctx's storage, kept with the pooled call rather than made
	// per request.
	rctx  service.RequestContext
	id    string
	start time.Time
	rp    *routeProxy
	// path is the request's escaped path as its service reads it
	// (plainPath): what picked the route, and what goes upstream.
	path []byte

	// budget and key are the principal's, once admitted (entered).
	budget  *budget
	key     string
	entered bool
	// later is the units charged once the request is done. body is the
	// request body as it streams upstream; counted says its bytes are
	// charged as they passed (a body without a length).
	later   int
	body    clientBody
	counted bool

	watch *clientWatch
	// streamed is set when the answer streams; sent counts its bytes, for
	// the access log.
	streamed bool
	sent     int64
}

var calls = sync.Pool{New: func() any { return &call{watch: &clientWatch{}} }}

// handle serves one request.
func (a *App) handle(fc *fasthttp.RequestCtx) {
	if a.hsts != nil {
		fc.Response.Header.SetBytesV("Strict-Transport-Security", a.hsts)
	}
	raw := fc.URI().PathOriginal()
	path := plainPath(raw)
	rp := a.routeFor(raw, path)
	if rp == nil {
		a.serveOwn(fc)
		return
	}
	c := calls.Get().(*call)
	c.fc, c.rp, c.path, c.start = fc, rp, path, time.Now()
	c.id = a.requestID(fc)
	c.rctx.Reset(context.Background(), c.id)
	c.ctx = &c.rctx
	a.inFlight.Inc()
	fc.Response.Header.Set(service.HeaderRequestID, c.id)
	streaming := a.serve(c)
	if !streaming {
		drainBody(c)
		a.end(c)
	}
}

// serveOwn answers a request no route claims through package service's
// handler, unless its body could be large: that handler would hold it
// whole, so a body of unknown length or over maxOwnBodyBytes gets 413, and
// the connection ends rather than read it.
func (a *App) serveOwn(fc *fasthttp.RequestCtx) {
	if n := bodyLength(&fc.Request.Header); n < 0 || n > maxOwnBodyBytes {
		a.refuseOwn(fc, service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge,
			"no request body of unknown length or over %d KiB is accepted here", maxOwnBodyBytes>>10))
		fc.SetConnectionClose()
		return
	}
	if p := fc.Path(); bytes.Equal(p, pathReady) || bytes.Equal(p, pathMetrics) {
		// They answer without a token, and each is costly or queued
		// (one gather of the metrics at a time): one address asking for
		// nothing else would starve the operator's monitor. They count
		// against a budget of the asker's address, the free tier's size,
		// kept apart from its API requests: a monitor behind the same
		// address as busy clients (a tunnel on loopback) keeps its
		// answers. Judged on the decoded path, as package service's mux
		// serves /%6Detrics as /metrics. When limiting is down (Redis,
		// with LUCID_RATE_LIMIT_ON_ERROR=closed), they still answer: that
		// is when the operator needs them.
		_, key := a.principal(fc, nil)
		if he, ok := errors.AsType[*service.HTTPError](a.limit(context.Background(), fc, a.ownBudget, "own:"+key, 1, a.now())); ok && he.Status == http.StatusTooManyRequests {
			a.refuseOwn(fc, he)
			return
		}
	}
	// The adaptor takes the body whole through Request.Body, which logs a
	// warning when the body streams, as every body here does: one line of
	// log for any request that says Content-Length, to anyone. Read here,
	// within the bound checked above.
	if stream := fc.RequestBodyStream(); stream != nil {
		body, err := io.ReadAll(io.LimitReader(stream, maxOwnBodyBytes))
		if err != nil {
			// Too slow for the body's read timeout, or broken off.
			a.refuseOwn(fc, service.Errorf(http.StatusRequestTimeout, service.CodeBadRequest, "the request body was not received whole"))
			fc.SetConnectionClose()
			return
		}
		fc.Request.SetBody(body)
	}
	if !a.viaTrustedProxy(fc) {
		fc.Request.Header.Del(service.HeaderRequestID) // package service's handlers would keep it
	}
	a.own(fc)
}

var (
	pathReady   = []byte("/ready")
	pathMetrics = []byte("/metrics")
)

// requestID is the ID a request goes by: the X-Request-ID a trusted proxy
// sent, or a new one.
func (a *App) requestID(fc *fasthttp.RequestCtx) string {
	if v := fc.Request.Header.Peek(service.HeaderRequestID); len(v) > 0 && service.ValidRequestID(string(v)) && a.viaTrustedProxy(fc) {
		return string(v)
	}
	return service.NewRequestID()
}

// refuseOwn answers a request for the gateway's own endpoints with err,
// logged and metered as package service's handler would.
func (a *App) refuseOwn(fc *fasthttp.RequestCtx, err error) {
	id := a.requestID(fc)
	fc.Response.Header.Set(service.HeaderRequestID, id)
	a.writeError(service.WithRequestID(context.Background(), id), fc, id, err)
	a.srv.ObserveRequest("unmatched", string(fc.Method()), fc.Response.StatusCode(), time.Since(fc.Time()))
}

// drainBody reads what is left of a request body the gateway answered
// without forwarding (a 401, 405 or 429 before an upload), within the
// body's own limits, as nginx's lingering close does: closing with it
// unread would reset the connection under the client's upload, and the
// client would see the reset instead of the answer. A body that broke off
// or passed the bound on its way upstream, or was refused for its size, is
// not read at all, and no more than maxBodyBytes of one without a length:
// the connection ends instead.
func drainBody(c *call) {
	fc := c.fc
	n := bodyLength(&fc.Request.Header)
	s := fc.RequestBodyStream()
	switch {
	case s == nil || n == 0:
	case c.body.failed != nil || n > maxBodyBytes:
		fc.SetConnectionClose()
	default:
		if m, _ := io.CopyN(io.Discard, s, maxBodyBytes+1); m > maxBodyBytes {
			fc.SetConnectionClose()
		}
	}
}

// serve runs the route's handler, answering its error and a panic; it
// reports whether the answer streams on after it returns (and so ends
// the call itself).
func (a *App) serve(c *call) (streaming bool) {
	defer func() {
		if v := recover(); v != nil {
			a.logger.ErrorContext(c.ctx, "handler panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			c.fc.Response.ResetBody()
			a.writeError(c.ctx, c.fc, c.id, service.Errorf(http.StatusInternalServerError, service.CodeInternal, "internal error"))
			streaming = false
		}
	}()
	streaming, err := c.rp.serve(c)
	if err != nil {
		a.writeError(c.ctx, c.fc, c.id, err)
	}
	return streaming
}

// end finishes a call: the principal leaves, a body's cost is charged, and
// the request is logged and metered. A streamed answer ends when its body
// is closed.
func (a *App) end(c *call) {
	if c.entered {
		b := c.budget
		units := c.later
		if c.counted {
			units = a.bodyUnits(c.body.n, b)
		}
		a.charge(c.ctx, b, c.key, units)
		a.leave(b, c.key)
	}
	c.watch.stop() // a no-op unless the handler panicked mid-exchange
	fc := c.fc
	status := fc.Response.StatusCode()
	elapsed := time.Since(c.start)
	method := string(fc.Method())
	a.srv.ObserveRequest(c.rp.prefix, method, status, elapsed)
	a.inFlight.Dec()
	if a.logger.Enabled(c.ctx, slog.LevelInfo) {
		n := c.sent
		if !c.streamed { // Body would read a stream whole
			n = int64(len(fc.Response.Body()))
		}
		a.logger.LogAttrs(c.ctx, slog.LevelInfo, "request",
			slog.String("method", method), slog.String("path", service.LogPath(string(fc.URI().PathOriginal()))), slog.String("route", c.rp.prefix),
			slog.Int("status", status), slog.Int64("bytes", n), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
			slog.String("remote", fc.RemoteAddr().String()))
	}
	*c = call{watch: c.watch}
	c.rctx.Reset(context.Background(), "") // a late user sees no request, not a nil parent
	calls.Put(c)
}

// writeError answers err as package service does: JSON, with the request
// ID, and logged (a 5xx as an error).
func (a *App) writeError(ctx context.Context, fc *fasthttp.RequestCtx, id string, err error) {
	he, body := service.ErrorResponse(err, id)
	level := slog.LevelInfo
	if he.Status >= 500 {
		level = slog.LevelError
	}
	a.logger.Log(ctx, level, "request failed", "method", string(fc.Method()), "path", service.LogPath(string(fc.URI().PathOriginal())),
		"status", he.Status, "code", he.Code, "error", err)
	h := &fc.Response.Header
	if he.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(he.RetryAfter))
	}
	h.SetContentType("application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	fc.SetStatusCode(he.Status)
	fc.SetBody(body)
}
