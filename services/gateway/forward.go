package gateway

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/quietconn"
	"github.com/pickme/lucid/pkg/service"
)

// The proxy path. fasthttp's HostClient keeps each upstream instance's
// keep-alive connections (and dials them, over TLS when the mesh or an
// https address says so), and fasthttp writes and parses the messages.
// The gateway drives each exchange on a connection itself, through
// HostClient's connection API, for what a whole-request deadline cannot
// say: the route's timeout bounds the wait for an answer's headers, not a
// streaming body; a client that leaves ends the upstream exchange at once;
// a connection holding bytes nobody asked for is never reused; and a read
// without a body that meets a connection the upstream closed while idle is
// sent again on another.

// Limits of the upstream connections. Idle ones are dropped well before
// the services' own two-minute idle timeout, so a request seldom meets a
// connection the upstream has just closed.
const (
	maxUpstreamConns    = 4096
	upstreamIdleTimeout = 60 * time.Second
	upstreamDialTimeout = 5 * time.Second
	// upstreamBufferSize bounds an answer's headers.
	upstreamBufferSize = 16 << 10
	// smallBody: an answer of known length up to this is read whole and
	// sent in one write; a larger one, or one without a length (a follow
	// stream), streams through as it comes.
	smallBody = 64 << 10
	// maxStaleConns bounds the kept-alive connections a read tries after
	// one was found closed, before it gives up on the instance.
	maxStaleConns = 4
)

// newHostClient makes the connection pool of the instance at u. tlsConfig
// is the mesh's; without it an https instance is still called over TLS,
// verified against the system's roots.
func newHostClient(u *url.URL, tlsConfig *tls.Config) *fasthttp.HostClient {
	isTLS := u.Scheme == "https"
	if isTLS && tlsConfig == nil {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if isTLS {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	d := &net.Dialer{Timeout: upstreamDialTimeout, KeepAlive: 30 * time.Second}
	return &fasthttp.HostClient{
		Addr:      addr,
		IsTLS:     isTLS,
		TLSConfig: tlsConfig,
		Dial: func(addr string) (net.Conn, error) {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			return quietconn.Wrap(c), nil
		},
		MaxConns:                 maxUpstreamConns,
		MaxConnWaitTimeout:       upstreamDialTimeout,
		MaxIdleConnDuration:      upstreamIdleTimeout,
		ReadBufferSize:           upstreamBufferSize,
		DisablePathNormalizing:   true,
		NoDefaultUserAgentHeader: true,
	}
}

// bodilessRead reports whether a request may be sent twice: an idempotent
// read without a body.
func bodilessRead(fc *fasthttp.RequestCtx) bool {
	switch string(fc.Method()) {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return bodyLength(&fc.Request.Header) == 0
	}
	return false
}

// bodyLength is a request's body length: its Content-Length, -1 when
// chunked, 0 without either (fasthttp's -2: a request without framing has
// no body).
func bodyLength(h *fasthttp.RequestHeader) int {
	if n := h.ContentLength(); n >= -1 {
		return n
	}
	return 0
}

// errMalformedAnswer is an answer whose headers could not be parsed.
var errMalformedAnswer = errors.New("the upstream's answer headers are malformed or too large")

// errIdleTimedOut is a 408 found on a reused connection.
var errIdleTimedOut = errors.New("the upstream timed out the idle connection (408)")

// forward proxies c to inst. A read without a body that fails before the
// upstream has answered ejects the instance and, if it failed quickly,
// tries one other. It reports whether the answer streams on.
func (rp *routeProxy) forward(c *call, inst *instance, claims *auth.Claims, counted bool) (bool, error) {
	fc := c.fc
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	rp.proxyRequest(c, req, inst.url, claims)
	bodiless := bodilessRead(fc)
	if n := bodyLength(&fc.Request.Header); n != 0 {
		if s := fc.RequestBodyStream(); s != nil {
			c.body = clientBody{r: s, length: int64(n)}
			req.SetBodyStream(&c.body, n)
		} else {
			req.SetBodyRaw(fc.Request.Body())
		}
	}
	c.counted = counted
	resp := fasthttp.AcquireResponse()
	start := time.Now()
	finish, err := rp.exchange(c, inst, req, resp, bodiless, start)
	if err != nil && c.body.failed != nil {
		// The client's side failed, not the upstream's: no instance is
		// blamed, and nothing goes again.
		c.watch.stop()
		fasthttp.ReleaseResponse(resp)
		return false, c.body.refusal()
	}
	if err != nil && !c.watch.left() {
		rp.pool.eject(inst, rp.gw.now())
		// Only a read without a body may go again, and only after a
		// quick failure: a timeout already spent the route's time.
		if bodiless && !isTimeout(err) && time.Since(start) <= time.Second {
			if other, perr := rp.pool.pick(rp.gw.now(), inst); perr == nil {
				req.Reset()
				rp.proxyRequest(c, req, other.url, claims)
				if finish, err = rp.exchange(c, other, req, resp, bodiless, time.Now()); err != nil {
					rp.pool.eject(other, rp.gw.now())
				}
			}
		}
	}
	if err != nil {
		c.watch.stop()
		fasthttp.ReleaseResponse(resp)
		return false, rp.upstreamFailed(err)
	}
	return rp.relay(c, resp, finish)
}

// exchange sends req to inst and reads the answer's headers, and its body
// when small. A kept-alive connection that fails without a timeout, or
// answers 408, was most likely closed by the upstream while idle, so a
// bodiless read is sent once more on another connection. finish, for an
// answer whose body streams, ends the connection once the body is done:
// kept for the next request when keep says it was read to its end.
func (rp *routeProxy) exchange(c *call, inst *instance, req *fasthttp.Request, resp *fasthttp.Response, bodiless bool, start time.Time) (finish func(keep bool), err error) {
	hc := inst.client
	for stale := 0; ; stale++ {
		cc, err := hc.AcquireConn(rp.route.Timeout, false)
		if err != nil {
			return nil, err
		}
		conn := cc.Conn()
		reused := !cc.LastUseTime().IsZero()
		br, partial, err := rp.roundTrip(c, hc, conn, req, resp, bodiless)
		if err == nil && reused && resp.StatusCode() == http.StatusRequestTimeout {
			// As net/http reads it: a 408 on a kept-alive connection is
			// the upstream closing it while idle, not an answer.
			err = errIdleTimedOut
		}
		if err != nil {
			c.watch.detach()
			if br != nil {
				hc.ReleaseReader(br)
			}
			hc.CloseConn(cc)
			if reused && bodiless && stale < maxStaleConns && !isTimeout(err) && !c.watch.left() {
				continue
			}
			return nil, err
		}
		rp.latency.Observe(time.Since(start).Seconds())
		if resp.BodyStream() == nil { // read whole, or none
			// Bytes past the answer were never asked for (a late 408, a
			// broken upstream): they would be read as the next answer. A
			// client seen leaving before the watch let the connection go
			// may have cut it (clientGone).
			keep := !partial && !resp.ConnectionClose() && br.Buffered() == 0 && !c.watch.left()
			hc.ReleaseReader(br)
			if keep {
				hc.ReleaseConn(cc)
			} else {
				hc.CloseConn(cc)
			}
			return nil, nil
		}
		return func(keep bool) { // the same, once the body is done
			keep = keep && !partial && !resp.ConnectionClose() && br.Buffered() == 0
			hc.ReleaseReader(br)
			if keep {
				hc.ReleaseConn(cc)
			} else {
				hc.CloseConn(cc)
			}
		}, nil
	}
}

// answeredHook, when set (by tests), runs when an answer has been read
// whole, before the client watch lets its connection go.
var answeredHook func(*call)

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// roundTrip writes req on conn and reads the answer's headers within the
// route's timeout, counted from when the request is all written, and for
// as long as the client stays. The body, if it streams, may take as long
// as it takes (follow, audits). A request with a body is written while
// the answer is read, since the upstream may answer before it has read
// all of it (a refusal, a 413): that answer is the client's, and partial
// says the connection, with the body cut short, cannot be used again.
func (rp *routeProxy) roundTrip(c *call, hc *fasthttp.HostClient, conn net.Conn, req *fasthttp.Request, resp *fasthttp.Response, bodiless bool) (br *bufio.Reader, partial bool, err error) {
	var sent chan error
	if bodiless {
		// A request without a body fits the socket's buffer.
		if err := writeRequest(hc, conn, req); err != nil {
			return nil, false, err
		}
		if err := rp.awaitAnswer(c, conn); err != nil {
			return nil, false, err
		}
	} else {
		// The body comes as fast as the client sends it, within the
		// server's body timeout, and the answer may come before.
		if err := c.watch.use(conn, time.Now().Add(bodyTimeout+rp.route.Timeout)); err != nil {
			return nil, false, err
		}
		if err := conn.SetWriteDeadline(time.Now().Add(bodyTimeout)); err != nil {
			return nil, false, err
		}
		sent = make(chan error, 1)
		go func() {
			err := writeRequest(hc, conn, req)
			if err == nil {
				err = rp.awaitAnswer(c, conn)
			} else if c.body.failed != nil {
				// The client's body broke off or grew too large: no answer
				// is coming that it could have, so the read ends now.
				_ = conn.SetReadDeadline(time.Unix(1, 0))
			}
			sent <- err
		}()
	}
	br = hc.AcquireReader(conn)
	resp.Reset()
	resp.SkipBody = req.Header.IsHead()
	err = readAnswer(br, resp)
	if sent != nil {
		select {
		case werr := <-sent:
			partial = werr != nil
		default:
			// Answered before the body was all sent: the rest is not
			// wanted. Cut the write and wait for the writer, which reads
			// the client's body and req.
			_ = conn.SetWriteDeadline(time.Unix(1, 0))
			partial = <-sent != nil
		}
		if !partial {
			// The connection may be used again, by a request whose write
			// has no deadline.
			_ = conn.SetWriteDeadline(time.Time{})
		}
		if err != nil {
			return br, partial, err
		}
	}
	if err != nil {
		return br, false, err
	}
	if resp.BodyStream() == nil {
		if answeredHook != nil {
			answeredHook(c)
		}
		c.watch.detach() // the connection goes back to the pool
		return br, partial, nil
	}
	if resp.Header.ContentLength() < 0 && !c.fc.Request.Header.IsHTTP11() {
		// Read whole for an HTTP/1.0 client (readWhole): within the
		// route's time.
		return br, partial, c.watch.use(conn, time.Now().Add(rp.route.Timeout))
	}
	return br, partial, c.watch.use(conn, time.Time{})
}

// writeRequest writes req on conn through HostClient's pooled writer.
func writeRequest(hc *fasthttp.HostClient, conn net.Conn, req *fasthttp.Request) error {
	bw := hc.AcquireWriter(conn)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	return err
}

// awaitAnswer starts the wait for the answer once the request is all
// sent: the client, all read, can be watched for leaving, and the route's
// timeout runs.
func (rp *routeProxy) awaitAnswer(c *call, conn net.Conn) error {
	c.watch.arm(c.fc.Conn())
	return c.watch.use(conn, time.Now().Add(rp.route.Timeout))
}

// maxInterim bounds the informational answers (103 Early Hints) skipped
// before the real one.
const maxInterim = 8

// readAnswer reads an upstream's answer into resp: the headers after any
// informational ones, and a body of known length up to smallBody whole;
// a larger body, or one without a length, is left to stream.
func readAnswer(br *bufio.Reader, resp *fasthttp.Response) error {
	for n := 0; ; n++ {
		if err := resp.Header.Read(br); err != nil {
			var ne net.Error // fasthttp's own ErrTimeout is not one
			if isTimeout(err) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return err
			}
			// fasthttp's parse errors quote the bytes, which may hold a
			// Set-Cookie: the log learns only that they were bad.
			return errMalformedAnswer
		}
		status := resp.StatusCode()
		if status == http.StatusSwitchingProtocols {
			return errors.New("upstream switched protocols on a request that did not ask to")
		}
		if status >= 200 {
			break
		}
		if n == maxInterim {
			return errors.New("upstream sent too many informational answers")
		}
	}
	switch resp.StatusCode() {
	case http.StatusNoContent, http.StatusNotModified:
		return nil // no body, whatever the headers say
	}
	if resp.SkipBody {
		return nil
	}
	n := resp.Header.ContentLength()
	resp.StreamBody = n < 0 || n > smallBody
	return resp.ReadBody(br, 0)
}

// relay makes resp the client's answer. An answer read whole is copied
// and the call ends with the handler; one that streams is sent as it comes
// (flushed chunk by chunk when it has no length), and the call ends when
// it is done. It reports whether the answer streams.
func (rp *routeProxy) relay(c *call, resp *fasthttp.Response, finish func(keep bool)) (bool, error) {
	fc := c.fc
	if resp.BodyStream() != nil && resp.Header.ContentLength() < 0 && !fc.Request.Header.IsHTTP11() {
		if err := rp.readWhole(c, resp, finish); err != nil {
			return false, err
		}
	}
	out := &fc.Response.Header
	conn := connectionTokens(resp.Header.Peek("Connection"))
	for k, v := range resp.Header.All() {
		// The gateway has set the request ID on the answer already.
		switch ks := string(k); {
		case hopHeader(ks), ks == "Content-Length", ks == service.HeaderRequestID:
		case conn != nil && slices.Contains(conn, ks):
		default:
			out.AddBytesKV(k, v)
		}
	}
	fc.SetStatusCode(resp.StatusCode())
	if resp.SkipBody {
		// HEAD: the length is the upstream's, the body nobody's.
		fc.Response.SkipBody = true
		out.SetContentLength(resp.Header.ContentLength())
	}
	stream := resp.BodyStream()
	if stream == nil { // read whole, or none
		if len(resp.Body()) > 0 {
			fc.SetBody(resp.Body())
		}
		c.watch.stop()
		fasthttp.ReleaseResponse(resp)
		return false, nil
	}
	c.streamed = true
	// Trailers the upstream announces follow a chunked body; their values
	// are copied as the body ends (upstreamBody.Read).
	for t := range resp.Header.Trailers() {
		_ = out.AddTrailerBytes(t) // one fasthttp refuses is left out
	}
	fc.Response.SetBodyStream(&upstreamBody{c: c, r: stream, resp: resp, finish: finish}, resp.Header.ContentLength())
	return true, nil
}

// http10Body bounds an answer without a length read whole for an HTTP/1.0
// client.
const http10Body = 1 << 20

// readWhole reads into resp the body of an answer without a length, for
// an HTTP/1.0 client: it cannot take a chunked answer (RFC 9112 6.1), the
// one way fasthttp sends a body of unknown length. The body must end
// within http10Body and the route's timeout (roundTrip kept it on the
// connection); a longer one is 502, a slower one (a follow stream) 504,
// and neither is the instance's fault.
func (rp *routeProxy) readWhole(c *call, resp *fasthttp.Response, finish func(keep bool)) error {
	body, err := io.ReadAll(io.LimitReader(resp.BodyStream(), http10Body+1))
	whole := err == nil && len(body) <= http10Body
	if whole {
		if answeredHook != nil {
			answeredHook(c)
		}
		c.watch.detach() // the connection goes back to the pool
	}
	finish(whole && !c.watch.left()) // unless the watch cut it first
	if !whole {
		c.watch.stop()
		fasthttp.ReleaseResponse(resp)
	}
	switch {
	case err != nil:
		return rp.upstreamFailed(err)
	case len(body) > http10Body:
		rp.errors.Inc()
		return service.Errorf(http.StatusBadGateway, CodeUpstream, "the answer has no length and is over %d KiB: an HTTP/1.0 client cannot take it (ask with HTTP/1.1)", http10Body>>10)
	}
	resp.SetBodyRaw(body) // ends the stream
	return nil
}

// upstreamBody is a streaming answer's body as the client's response reads
// it. The server closes it when the response is done, however it ends.
type upstreamBody struct {
	c      *call
	r      io.Reader
	resp   *fasthttp.Response
	finish func(keep bool)
	eof    bool
	failed error
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.c.sent += int64(n)
	switch {
	case err == io.EOF:
		b.eof = true
		out := &b.c.fc.Response.Header
		for t := range b.resp.Header.Trailers() {
			if v := b.resp.Header.PeekBytes(t); len(v) > 0 {
				out.SetBytesKV(t, v)
			}
		}
	case err != nil && b.failed == nil:
		b.failed = err
	}
	return n, err
}

// Close ends the upstream exchange, keeping the connection if the body was
// read to its end, and then the call. A body the upstream broke off is
// logged; the client sees it cut short (the server ends its connection).
func (b *upstreamBody) Close() error {
	c := b.c
	left := c.watch.stop()
	b.finish(b.eof && !left)
	if b.failed != nil && !left {
		c.rp.logger.WarnContext(c.ctx, "upstream response cut off", "service", c.rp.route.Service, "error", b.failed)
		c.rp.errors.Inc()
	}
	fasthttp.ReleaseResponse(b.resp)
	c.rp.gw.end(c)
	return nil
}

// errBodyTooLarge stops a body without a length that passes maxBodyBytes.
var errBodyTooLarge = errors.New("the request body is larger than allowed")

// clientBody is a request body as the proxy sends it upstream: it counts
// the bytes, stops a body without a length at maxBodyBytes (a length over
// it is refused before), and keeps the error of the client's side, for
// which the exchange ends at once (roundTrip) instead of waiting for an
// answer to a body that will not come.
type clientBody struct {
	r      io.Reader
	length int64 // the Content-Length, -1 without
	n      int64
	failed error // the client's read error, or errBodyTooLarge; never io.EOF
}

func (b *clientBody) Read(p []byte) (int, error) {
	if b.failed != nil {
		return 0, b.failed
	}
	rest := maxBodyBytes - b.n
	if rest <= 0 {
		// At the limit, one byte more says the body passes it.
		var one [1]byte
		p = one[:]
	} else if int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	switch {
	case rest <= 0 && n > 0:
		b.failed = errBodyTooLarge
		return 0, b.failed
	case err == io.EOF && b.length >= 0 && b.n < b.length:
		// fasthttp's stream ends at a client that closed early as at the
		// body's end.
		err = io.ErrUnexpectedEOF
		b.failed = err
	case err != nil && err != io.EOF:
		b.failed = err
	}
	return n, err
}

// refusal is the client's answer when its side of the exchange failed.
func (b *clientBody) refusal() error {
	if errors.Is(b.failed, errBodyTooLarge) {
		return service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "a request body is at most %d MiB", maxBodyBytes>>20)
	}
	if isTimeout(b.failed) {
		return service.Errorf(http.StatusRequestTimeout, service.CodeBadRequest, "the request body did not come within %s", bodyTimeout)
	}
	he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the request body could not be read")
	he.Cause = b.failed
	return he
}
