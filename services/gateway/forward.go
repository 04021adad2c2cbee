package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// The gateway's fast path carries the requests that make up nearly all of
// its traffic, reads (GET, HEAD, OPTIONS without a body), over keep-alive
// HTTP/1.1 connections it uses synchronously: the handler writes the
// request and reads the answer on its own goroutine, with no request clone
// and no hand-off to a transport's reader and writer goroutines. Measured
// against httputil.ReverseProxy on the same route, it halves the CPU a
// request costs (docs/gateway.md). Everything else, bodies and upgrades
// included, goes through httputil.ReverseProxy and http.Transport; the
// request and response are still parsed and written by net/http
// (http.ReadResponse), so only the connection handling is the gateway's.

// Limits of the fast path's upstream connections. Idle ones are dropped
// well before the services' own two-minute idle timeout, so a request
// seldom meets a connection the upstream has just closed.
const (
	maxIdleUpstreamConns = 256
	upstreamIdleTimeout  = 60 * time.Second
	upstreamDialTimeout  = 5 * time.Second
	upstreamBufferSize   = 4 << 10
)

// fastPath reports whether r may take the fast path: an idempotent request
// without a body (so it can be retried on a fresh connection), not asking
// to switch protocols.
func fastPath(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return r.ContentLength == 0 && (r.Body == nil || r.Body == http.NoBody) && r.Header["Upgrade"] == nil
}

// upstreamConn is one keep-alive connection to an instance.
type upstreamConn struct {
	nc        net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	reused    bool
}

// connPool keeps an instance's idle connections, most recently used first.
type connPool struct {
	addr   string
	tls    *tls.Config // nil: plain HTTP
	mu     sync.Mutex
	idle   []*upstreamConn
	closed bool
}

// newConnPool makes the pool of the instance at u. tlsConfig is the mesh's;
// without it an https instance is still called over TLS, verified against
// the system's roots as http.Transport would.
func newConnPool(u *url.URL, tlsConfig *tls.Config) *connPool {
	if tlsConfig == nil && u.Scheme == "https" {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	return &connPool{addr: host, tls: tlsConfig}
}

// get returns an idle connection, or dials a new one.
func (p *connPool) get(ctx context.Context, now time.Time) (*upstreamConn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(c.idleSince) < upstreamIdleTimeout {
			p.mu.Unlock()
			c.reused = true
			return c, nil
		}
		// The freshest is stale, so all the others are too.
		stale := p.idle
		p.idle = nil
		p.mu.Unlock()
		_ = c.nc.Close()
		for _, s := range stale {
			_ = s.nc.Close()
		}
	} else {
		p.mu.Unlock()
	}
	return p.dial(ctx)
}

func (p *connPool) dial(ctx context.Context) (*upstreamConn, error) {
	d := &net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second}
	var nc net.Conn
	var err error
	if p.tls != nil {
		nc, err = (&tls.Dialer{NetDialer: d, Config: p.tls}).DialContext(ctx, "tcp", p.addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", p.addr)
	}
	if err != nil {
		return nil, err
	}
	return &upstreamConn{nc: nc, br: bufio.NewReaderSize(nc, upstreamBufferSize), bw: bufio.NewWriterSize(nc, upstreamBufferSize)}, nil
}

// put returns a connection whose exchange completed cleanly.
func (p *connPool) put(c *upstreamConn) {
	c.idleSince = time.Now()
	p.mu.Lock()
	if !p.closed && len(p.idle) < maxIdleUpstreamConns {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = c.nc.Close()
}

// prune closes the connections idle since before the idle timeout, so
// ones the upstream has closed do not linger until the next request.
func (p *connPool) prune(now time.Time) {
	p.mu.Lock()
	var stale []*upstreamConn
	keep := p.idle[:0]
	for _, c := range p.idle {
		if now.Sub(c.idleSince) < upstreamIdleTimeout {
			keep = append(keep, c)
		} else {
			stale = append(stale, c)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.mu.Unlock()
	for _, c := range stale {
		_ = c.nc.Close()
	}
}

// close drops the idle connections and any returned later.
func (p *connPool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
}

// hopHeader reports whether k is a hop-by-hop header (RFC 9110 7.6.1),
// which a proxy never forwards.
func hopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// connectionTokens lists the headers h's Connection header names as
// hop-by-hop too; nil when there are none, as for most requests.
func connectionTokens(h http.Header) []string {
	var out []string
	for _, v := range h["Connection"] {
		for t := range strings.SplitSeq(v, ",") {
			if t = textproto.TrimString(t); t != "" {
				out = append(out, http.CanonicalHeaderKey(t))
			}
		}
	}
	return out
}

// forward proxies r on the fast path. A failure before the upstream has
// answered ejects the instance and, if it came quickly, tries one other.
func (rp *routeProxy) forward(w http.ResponseWriter, r *http.Request, inst *instance, claims *auth.Claims) {
	cw := &clientWatch{}
	stop := context.AfterFunc(r.Context(), cw.leave)
	defer stop()
	start := time.Now()
	// The response is read off the pooled connection uc, and relay ends it
	// by closing or pooling uc; Body.Close would wait out a stalled
	// upstream's remaining body instead.
	resp, uc, err := rp.exchange(r, inst, claims, cw, start) //nolint:bodyclose // relay ends it through uc, see above
	if err != nil && r.Context().Err() == nil {
		rp.pool.eject(inst, rp.gw.now())
		if !isTimeout(err) && time.Since(start) <= time.Second {
			if other, perr := rp.pool.pick(rp.gw.now(), inst); perr == nil {
				inst = other
				if resp, uc, err = rp.exchange(r, other, claims, cw, time.Now()); err != nil { //nolint:bodyclose // relay ends it through uc
					rp.pool.eject(other, rp.gw.now())
				}
			}
		}
	}
	if err != nil {
		rp.upstreamFailed(w, r, err)
		return
	}
	rp.relay(w, r, resp, uc, inst, stop)
}

// errIdleTimedOut is a 408 found on a reused connection.
var errIdleTimedOut = errors.New("the upstream timed out the idle connection (408)")

// errClientLeft ends an exchange whose client has gone.
var errClientLeft = errors.New("the client went away")

// clientWatch ends the upstream exchange when the client leaves, by
// expiring the deadline of whichever connection is in use. One per
// request, and all deadline changes go through it, so a departure cannot
// be undone by a deadline set just after it.
type clientWatch struct {
	mu   sync.Mutex
	nc   net.Conn
	gone bool
}

// leave runs, once, when the request's context ends.
func (cw *clientWatch) leave() {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	cw.gone = true
	if cw.nc != nil {
		_ = cw.nc.SetDeadline(time.Unix(1, 0))
	}
}

// readDeadline points the watch at nc and sets its read deadline (zero:
// none). Only reading can wait on the upstream: a request without a body
// fits in the socket's buffer.
func (cw *clientWatch) readDeadline(nc net.Conn, t time.Time) error {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	if cw.gone {
		return errClientLeft
	}
	cw.nc = nc
	return nc.SetReadDeadline(t)
}

// exchange sends r to inst and reads the response headers. A kept-alive
// connection that fails without a timeout was most likely closed by the
// upstream while idle, so the request, being idempotent, is sent once more
// on a fresh connection.
func (rp *routeProxy) exchange(r *http.Request, inst *instance, claims *auth.Claims, cw *clientWatch, start time.Time) (*http.Response, *upstreamConn, error) {
	ctx := r.Context()
	uc, err := inst.conns.get(ctx, start)
	if err != nil {
		return nil, nil, err
	}
	resp, err := rp.roundTrip(uc, r, inst, claims, cw, start)
	if err == nil && uc.reused && resp.StatusCode == http.StatusRequestTimeout {
		// As http.Transport reads it: a 408 on a kept-alive connection is
		// the upstream closing it while idle, not an answer to r.
		err = errIdleTimedOut
	}
	if err != nil && uc.reused && ctx.Err() == nil && !isTimeout(err) {
		_ = uc.nc.Close()
		if uc, err = inst.conns.dial(ctx); err != nil {
			return nil, nil, err
		}
		resp, err = rp.roundTrip(uc, r, inst, claims, cw, start)
	}
	if err != nil {
		_ = uc.nc.Close()
		return nil, nil, err
	}
	rp.latency.Observe(time.Since(start).Seconds())
	return resp, uc, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// roundTrip writes the request on uc and reads the response headers,
// within the route's timeout and for as long as the client stays.
func (rp *routeProxy) roundTrip(uc *upstreamConn, r *http.Request, inst *instance, claims *auth.Claims, cw *clientWatch, start time.Time) (*http.Response, error) {
	if err := cw.readDeadline(uc.nc, start.Add(rp.route.Timeout)); err != nil {
		return nil, err
	}
	if err := rp.writeRequest(uc.bw, r, inst.url, claims); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(uc.br, r)
	// Informational answers (103 Early Hints) precede the real one.
	for err == nil && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
		resp, err = http.ReadResponse(uc.br, r)
	}
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return nil, errors.New("upstream switched protocols on a request that did not ask to")
	}
	// The body may stream for as long as it takes (follow, audits).
	return resp, cw.readDeadline(uc.nc, time.Time{})
}

// writeRequest writes r as the upstream sees it: the target's path, the
// upstream's Host, the client's end-to-end headers, and the gateway's own
// forwarding, request-ID and identity headers. Header names and values
// were validated by net/http when the request was read, and claims by
// auth.Parse, so all are safe to write as they are.
func (rp *routeProxy) writeRequest(bw *bufio.Writer, r *http.Request, target *url.URL, claims *auth.Claims) error {
	path := rp.upstreamPath(r, target)
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(path)
	if q := joinQuery(target.RawQuery, r.URL.RawQuery); q != "" {
		bw.WriteByte('?')
		bw.WriteString(q)
	}
	bw.WriteString(" HTTP/1.1\r\n")
	writeHeader(bw, "Host", target.Host)
	conn := connectionTokens(r.Header)
	for k, vv := range r.Header {
		if hopHeader(k) || !rp.passesHeader(k) || (conn != nil && slices.Contains(conn, k)) {
			continue
		}
		for _, v := range vv {
			writeHeader(bw, k, v)
		}
	}
	// A client may say it accepts trailers; nothing else of TE is ours
	// to pass on.
	if hasToken(r.Header["Te"], "trailers") {
		writeHeader(bw, "Te", "trailers")
	}
	rp.forwardHeaders(r, path, claims, func(k, v string) { writeHeader(bw, k, v) })
	bw.WriteString("\r\n")
	return bw.Flush()
}

// hasToken reports whether a comma-separated header holds token.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(t), token) {
				return true
			}
		}
	}
	return false
}

func writeHeader(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// joinQuery joins a target's query and a request's, as ReverseProxy does.
func joinQuery(target, in string) string {
	if target == "" || in == "" {
		return target + in
	}
	return target + "&" + in
}

// relay sends the upstream's response to the client and keeps the
// connection if the body was read to its end. A response without a length
// is a stream, flushed as it comes.
func (rp *routeProxy) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, uc *upstreamConn, inst *instance, stopWatch func() bool) {
	dst := w.Header()
	conn := connectionTokens(resp.Header)
	for k, vv := range resp.Header {
		// The gateway has set the request ID on the response already.
		if hopHeader(k) || k == service.HeaderRequestID || (conn != nil && slices.Contains(conn, k)) {
			continue
		}
		if old, ok := dst[k]; ok {
			dst[k] = append(old, vv...)
		} else {
			dst[k] = vv
		}
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)

	buf := rp.buffers.get()
	readErr, writeErr := copyBody(w, resp.Body, *buf, resp.ContentLength < 0)
	rp.buffers.put(buf)
	// Once stopped, the watch can no longer touch the connection, so it
	// is safe to hand to another request.
	clientLeft := !stopWatch()
	if readErr == nil && writeErr == nil && !clientLeft {
		for k, vv := range resp.Trailer {
			dst[http.TrailerPrefix+k] = vv
		}
		// Bytes past the response were never asked for (a late 408, a
		// broken upstream): they would be read as the next request's
		// answer.
		if resp.Close || uc.br.Buffered() > 0 {
			_ = uc.nc.Close()
		} else {
			inst.conns.put(uc)
		}
		return
	}
	_ = uc.nc.Close()
	if readErr != nil && writeErr == nil && !clientLeft {
		// The upstream broke off mid-body. The status is out, so only
		// aborting the response tells the client it is incomplete.
		rp.logger.WarnContext(r.Context(), "upstream response cut off", "service", rp.route.Service, "error", readErr)
		rp.errors.Inc()
		panic(http.ErrAbortHandler)
	}
}

// copyBody copies src to w, flushing after each read when stream is set.
// It returns the read error (other than EOF) and the write error apart.
func copyBody(w http.ResponseWriter, src io.Reader, buf []byte, stream bool) (readErr, writeErr error) {
	var rc *http.ResponseController
	if stream {
		rc = http.NewResponseController(w)
	}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			if rc != nil {
				if ferr := rc.Flush(); ferr != nil {
					return nil, ferr
				}
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}
