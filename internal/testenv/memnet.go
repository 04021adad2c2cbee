package testenv

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// MemNet is an in-memory network of listeners keyed by address. Tests
// inside a testing/synctest bubble use it instead of loopback TCP: a
// goroutine blocked on one of its connections is durably blocked, so the
// fake clock can advance, while one blocked on a socket is not. Unlike
// net.Pipe, a connection buffers what is written to it, as a socket does,
// so two ends that both write before reading (TLS close alerts) do not
// block each other. The zero value is ready to use.
type MemNet struct {
	mu        sync.Mutex
	listeners map[string]*memListener
}

// Listen returns a listener at addr, which dialers reach by that exact
// string. An address is listened on once at a time.
func (n *MemNet) Listen(addr string) (net.Listener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.listeners[addr]; taken {
		return nil, fmt.Errorf("memnet: listen on %s: address in use", addr)
	}
	if n.listeners == nil {
		n.listeners = map[string]*memListener{}
	}
	ln := &memListener{net: n, addr: memAddr(addr), conns: make(chan net.Conn), closed: make(chan struct{})}
	n.listeners[addr] = ln
	return ln, nil
}

// DialContext connects to the listener at addr; it has the signature of
// http.Transport.DialContext. network is ignored.
func (n *MemNet) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	n.mu.Lock()
	ln := n.listeners[addr]
	n.mu.Unlock()
	if ln == nil {
		return nil, fmt.Errorf("memnet: dial %s: connection refused", addr)
	}
	clientAddr := memAddr("client-of-" + addr)
	client, server := memPipe(clientAddr, ln.addr)
	select {
	case ln.conns <- server:
		return client, nil
	case <-ln.closed:
		return nil, fmt.Errorf("memnet: dial %s: connection refused", addr)
	case <-ctx.Done():
		return nil, fmt.Errorf("memnet: dial %s: %w", addr, ctx.Err())
	}
}

type memListener struct {
	net       *MemNet
	addr      memAddr
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		l.net.mu.Lock()
		delete(l.net.listeners, string(l.addr))
		l.net.mu.Unlock()
		err = nil
	})
	return err
}

func (l *memListener) Addr() net.Addr { return l.addr }

type memAddr string

func (a memAddr) Network() string { return "memnet" }
func (a memAddr) String() string  { return string(a) }
