package gateway

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// A client that leaves while the upstream thinks, or while an answer
// streams, ends the upstream exchange at once rather than at the route's
// timeout, so a departed client holds no upstream connection and no
// service work. fasthttp does not read a connection while its handler
// runs, so a request that is still waiting after watchDelay has its
// client's socket watched: the poller wakes the watch when the socket
// turns readable, and a closed or reset socket ends the exchange. Most
// requests are answered well before watchDelay and cost a timer.

// errClientLeft ends an exchange whose client has gone.
var errClientLeft = errors.New("the client went away")

// watchDelay is how long an exchange runs before its client is watched.
const watchDelay = 50 * time.Millisecond

// clientWatch is one call's watch over its client. Calls are pooled, and
// so are their watches with their timer.
type clientWatch struct {
	mu      sync.Mutex
	timer   *time.Timer // made once, reset by each arm
	armed   bool
	due     time.Time // when the armed watch starts: a late fire of an earlier arm does nothing
	client  net.Conn
	up      net.Conn // the upstream connection in use, cut when the client leaves
	gone    bool
	stopped bool
	// watching is set while a watch runs; quit stops it and done says it
	// has.
	watching   bool
	quit, done chan struct{}
}

// arm starts watching client after watchDelay, until stop.
func (w *clientWatch) arm(client net.Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.armed || w.stopped {
		return // armed already (a second exchange of the same call)
	}
	w.armed, w.client, w.due = true, client, time.Now().Add(watchDelay)
	if w.timer == nil {
		w.timer = time.AfterFunc(watchDelay, w.watch)
	} else {
		w.timer.Reset(watchDelay)
	}
}

// use points the watch at the upstream connection in use and sets its
// read deadline (zero: none), unless the client has left.
func (w *clientWatch) use(up net.Conn, deadline time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone {
		return errClientLeft
	}
	w.up = up
	return up.SetReadDeadline(deadline)
}

// detach forgets the upstream connection before it goes back to the pool,
// where the watch must not cut it.
func (w *clientWatch) detach() {
	w.mu.Lock()
	w.up = nil
	w.mu.Unlock()
}

// left reports whether the client has left.
func (w *clientWatch) left() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone
}

// stop ends the watch, waiting for it, and reports whether the client had
// left. The watch can then be armed again.
func (w *clientWatch) stop() (left bool) {
	w.mu.Lock()
	w.stopped = true
	if w.armed {
		w.timer.Stop()
	}
	watching, done := w.watching, w.done
	if watching {
		close(w.quit)
		_ = w.client.SetReadDeadline(time.Unix(1, 0)) // wakes the poller
	}
	w.mu.Unlock()
	if watching {
		<-done
	}
	w.mu.Lock()
	left = w.gone
	w.armed, w.gone, w.stopped, w.watching = false, false, false, false
	w.client, w.up = nil, nil
	w.mu.Unlock()
	return left
}

// watch runs on the timer's goroutine until the client leaves or the
// watch stops.
func (w *clientWatch) watch() {
	w.mu.Lock()
	if !w.armed || w.stopped || w.watching || time.Now().Before(w.due) {
		w.mu.Unlock()
		return
	}
	raw := rawConnOf(w.client)
	if raw == nil {
		w.mu.Unlock()
		return
	}
	// fasthttp's header deadline is still on the connection; the watch
	// waits for as long as the exchange runs. fasthttp sets the next
	// request's deadline itself.
	_ = w.client.SetReadDeadline(time.Time{})
	w.watching = true
	w.quit, w.done = make(chan struct{}), make(chan struct{})
	quit, done := w.quit, w.done
	w.mu.Unlock()

	if clientClosed(raw, quit) {
		w.clientGone()
	}
	close(done)
}

// clientGone records that the client has left, unless the watch has
// stopped, and cuts the upstream connection in use, if any: a connection
// cut so must not go back to the pool (left).
func (w *clientWatch) clientGone() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.gone = true
	if w.up != nil {
		_ = w.up.SetDeadline(time.Unix(1, 0))
	}
}

// rawConnOf is the socket under a client connection (TLS or not, parkable
// or not), or nil.
func rawConnOf(c net.Conn) syscall.RawConn {
	// Unwrapped as far as it goes: the gateway's idle wrapper, then TLS.
	for {
		t, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}
