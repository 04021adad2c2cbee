package testenv

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// memPipeChunks is how many writes a connection holds unread before a
// writer waits: room enough for a TLS flight and its close alert.
const memPipeChunks = 256

// memPipe is a connected pair of buffered in-memory connections, made of
// channels only, so that blocking on it is durable inside a synctest bubble.
func memPipe(a, b net.Addr) (net.Conn, net.Conn) {
	ab, ba := make(chan []byte, memPipeChunks), make(chan []byte, memPipeChunks)
	ca := &memConn{local: a, remote: b, rx: ba, tx: ab, closed: make(chan struct{})}
	cb := &memConn{local: b, remote: a, rx: ab, tx: ba, closed: make(chan struct{})}
	ca.peer, cb.peer = cb, ca
	ca.rdl, ca.wdl = newMemDeadline(), newMemDeadline()
	cb.rdl, cb.wdl = newMemDeadline(), newMemDeadline()
	return ca, cb
}

// memConn is one end of a memPipe.
type memConn struct {
	local, remote net.Addr
	rx, tx        chan []byte
	peer          *memConn

	rmu    sync.Mutex // one reader at a time; guards unread
	unread []byte
	wmu    sync.Mutex // writes are not interleaved
	rdl    *memDeadline
	wdl    *memDeadline
	once   sync.Once
	closed chan struct{}
}

func (c *memConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.unread) == 0 {
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-c.rdl.expired():
			return 0, os.ErrDeadlineExceeded
		default:
		}
		select {
		case c.unread = <-c.rx:
		case <-c.peer.closed:
			// What the peer wrote before closing is still read.
			select {
			case c.unread = <-c.rx:
			default:
				return 0, io.EOF
			}
		case <-c.closed:
			return 0, net.ErrClosed
		case <-c.rdl.expired():
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := copy(b, c.unread)
	c.unread = c.unread[n:]
	return n, nil
}

func (c *memConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.peer.closed:
		return 0, io.ErrClosedPipe
	case <-c.wdl.expired():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	if len(b) == 0 {
		return 0, nil
	}
	chunk := append([]byte(nil), b...)
	select {
	case c.tx <- chunk:
		return len(b), nil
	case <-c.closed:
		return 0, net.ErrClosed
	case <-c.peer.closed:
		return 0, io.ErrClosedPipe
	case <-c.wdl.expired():
		return 0, os.ErrDeadlineExceeded
	}
}

func (c *memConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() { close(c.closed); err = nil })
	return err
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// memDeadline is a settable deadline whose expiry is a closed channel; a
// new deadline wakes those waiting on the old one if it has passed.
type memDeadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline passes
}

func newMemDeadline() *memDeadline { return &memDeadline{cancel: make(chan struct{})} }

func (d *memDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the old timer fired, or is firing: let it finish
	}
	d.timer = nil
	closed := isClosedChan(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *memDeadline) expired() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosedChan(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
