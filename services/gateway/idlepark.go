package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// Idle keep-alive connections are parked. fasthttp serves a connection on
// one goroutine from its first request to its close, and that goroutine
// keeps its stack (about 8 KiB after a proxied request) and its read
// buffer (8 KiB, kept for the connection's life because request bodies
// stream) while the client thinks. Thousands of phones holding a
// connection open would cost a Pi a few hundred MiB for nothing. So a
// connection that stays idle for parkDelay is handed back by fasthttp,
// which frees all of that, and waits for its next request on a small
// goroutine of its own that only asks the runtime's poller whether bytes
// have come; when they come, fasthttp serves the connection again from the
// start. nginx frees an idle connection's buffers likewise.
//
// A connection goes through these states. fasthttp calls ConnState(idle)
// once a response is sent, and the next read deadline it sets is then its
// idle timeout: the connection waits for that time or parkDelay, whichever
// is shorter. If parkDelay passes with nothing read, fasthttp ends the
// connection as it would at its idle timeout, and its Close parks instead
// of closing. No byte is lost: the read that timed out read none, and
// fasthttp reads from its buffer, not the socket, while it holds any.

// parkDelay is how long a keep-alive connection waits on fasthttp's
// goroutine before it is parked. A client that pauses longer pays a
// goroutine and fasthttp's per-connection set-up on its next request,
// some microseconds.
const parkDelay = 20 * time.Millisecond

const (
	connActive   int32 = iota // serving a request, or its first not yet come
	connIdle                  // answered; the next read deadline is the idle one
	connWaiting               // waiting for the next request, parkDelay at most
	connParkable              // parkDelay passed with nothing read
	connParked                // handed to the parker
)

// sendTimeout bounds how long a write to a client may wait for the client
// to read, as nginx's send_timeout does. A client that stops reading its
// answer, or pipelines requests and reads none, loses its connection
// rather than hold it, its goroutine and buffers, and for a streamed
// answer an upstream connection and its concurrency slot, for ever; an
// answer that keeps moving, however long (a follow stream), is not cut.
const sendTimeout = 60 * time.Second

// parker holds the parked connections and gives each back to fasthttp
// when its client speaks again. It also keeps every client connection's
// send timeout, which it wraps anyway.
type parker struct {
	serve func(net.Conn) error // fasthttp's ServeConn
	delay time.Duration
	send  time.Duration // sendTimeout
	gauge prometheus.Gauge
	// limit counts the connections wrapped, when set.
	limit  *connLimit
	mu     sync.Mutex
	conns  map[*idleConn]struct{}
	closed bool
	// serving counts the connections given back to fasthttp, which its
	// shutdown may not know of yet when it returns.
	serving sync.WaitGroup
}

func newParker(serve func(net.Conn) error, gauge prometheus.Gauge) *parker {
	return &parker{serve: serve, delay: parkDelay, send: sendTimeout, gauge: gauge, conns: map[*idleConn]struct{}{}}
}

// connState is fasthttp's ConnState hook: it marks a connection that has
// answered its request.
func (p *parker) connState(c net.Conn, s fasthttp.ConnState) {
	if ic, ok := c.(parkable); ok && s == fasthttp.StateIdle {
		ic.idle().state.Store(connIdle)
	}
}

// park takes c from fasthttp, until its next request or its idle timeout.
func (p *parker) park(c *idleConn) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = c.closeConn()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	p.gauge.Inc()
	go p.wait(c)
}

// wait waits for c's next request and serves it, or closes c when the
// client has gone, the idle time is up, or the gateway is stopping.
func (p *parker) wait(c *idleConn) {
	ready := false
	if raw := rawConnOf(c.Conn); raw != nil && c.Conn.SetReadDeadline(c.idleUntil) == nil {
		data, err := awaitReadable(raw)
		ready = data && err == nil
	}
	p.mu.Lock()
	delete(p.conns, c)
	closed := p.closed
	if ready && !closed {
		p.serving.Add(1)
	}
	p.mu.Unlock()
	p.gauge.Dec()
	if !ready || closed {
		_ = c.closeConn()
		return
	}
	defer p.serving.Done()
	c.state.Store(connActive)
	_ = p.serve(c.outer) // to its next idle spell or its close
}

// close closes every parked connection, and those parked from now on. It
// comes before fasthttp's shutdown, which knows nothing of them; drain,
// after that shutdown, waits for connections woken just before.
func (p *parker) close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]*idleConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.closeConn() // ends its wait
	}
}

// drain waits until the connections given back to fasthttp before close
// are done, or ctx ends.
func (p *parker) drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() { p.serving.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// admittingListener hands out each accepted connection as admit wraps
// it (the parker's wrap, or the plain port's limit), and closes one admit
// refuses (nil): over a connection bound, nothing was read or written.
type admittingListener struct {
	net.Listener
	admit func(net.Conn) net.Conn
}

func (l admittingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if w := l.admit(c); w != nil {
			return w, nil
		}
		_ = c.Close()
	}
}

// wrap makes c parkable, and counts it; nil when it is over a connection
// bound. A TLS connection keeps its TLS methods, so fasthttp still sees it
// as one.
func (p *parker) wrap(c net.Conn) net.Conn {
	if !canPeek {
		return c
	}
	ic := &idleConn{Conn: c, p: p}
	if p.limit != nil {
		ic.addr = connAddr(c)
		if !p.limit.admit(ic.addr) {
			return nil
		}
		ic.counted = true
	}
	ic.outer = ic
	if tc, ok := c.(tlsConn); ok {
		t := &idleTLSConn{idleConn: ic, tls: tc}
		ic.outer = t
		return t
	}
	return ic
}

// tlsConn is what fasthttp asks of a TLS connection.
type tlsConn = interface {
	Handshake() error
	ConnectionState() tls.ConnectionState
}

// parkable is what wrap returns: an idleConn, or its TLS wrapper.
type parkable interface{ idle() *idleConn }

// idleConn is a client connection that can be parked while idle.
type idleConn struct {
	net.Conn
	p     *parker
	outer net.Conn // what fasthttp serves: this, or its TLS wrapper
	state atomic.Int32
	// idleUntil is fasthttp's idle deadline, kept while the connection
	// waits under the shorter park deadline.
	idleUntil time.Time
	// sendUntil is the write deadline last set; only fasthttp's serving
	// goroutine writes.
	sendUntil time.Time
	// addr is what the connection counts against in the parker's limit,
	// when counted; closed says it was closed for good.
	addr    netip.Addr
	counted bool
	closed  atomic.Bool
}

// closeConn closes the connection for good, and counts it closed once.
func (c *idleConn) closeConn() error {
	err := c.Conn.Close()
	if !c.closed.Swap(true) && c.counted {
		c.p.limit.release(c.addr)
	}
	return err
}

func (c *idleConn) idle() *idleConn { return c }

// NetConn is the connection underneath, for the client watch.
func (c *idleConn) NetConn() net.Conn { return c.Conn }

func (c *idleConn) SetReadDeadline(t time.Time) error {
	if c.state.CompareAndSwap(connIdle, connWaiting) {
		now := time.Now()
		if t.IsZero() {
			// fasthttp without an idle timeout would wait for ever; a
			// parked connection gets the gateway's.
			t = now.Add(idleTimeout)
		}
		c.idleUntil = t
		if d := now.Add(c.p.delay); d.Before(t) {
			t = d
		}
		return c.Conn.SetReadDeadline(t)
	}
	c.state.CompareAndSwap(connWaiting, connActive)
	return c.Conn.SetReadDeadline(t)
}

func (c *idleConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.state.Load() == connWaiting {
		switch {
		case n > 0:
			c.state.Store(connActive)
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(c.idleUntil):
			c.state.Store(connParkable)
		}
	}
	return n, err
}

// Write gives each write the send timeout. The deadline is moved only
// once a 64th of the timeout has passed (about a second), so a write may
// wait that much less than the timeout: setting a deadline costs a timer's
// update, a clock read does not.
func (c *idleConn) Write(b []byte) (int, error) {
	if until := time.Now().Add(c.p.send); until.Sub(c.sendUntil) > c.p.send/64 {
		if err := c.Conn.SetWriteDeadline(until); err != nil {
			return 0, err
		}
		c.sendUntil = until
	}
	return c.Conn.Write(b)
}

// Close parks a connection whose park deadline passed with nothing read;
// any other it closes.
func (c *idleConn) Close() error {
	if c.state.CompareAndSwap(connParkable, connParked) {
		c.p.park(c)
		return nil
	}
	return c.closeConn()
}

// idleTLSConn is an idleConn over TLS.
type idleTLSConn struct {
	*idleConn
	tls tlsConn
}

func (c *idleTLSConn) Handshake() error                     { return c.tls.Handshake() }
func (c *idleTLSConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }
