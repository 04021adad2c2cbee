package gateway

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Client connections are bounded per address and in all
// (LUCID_CONNS_PER_ADDRESS, LUCID_CONNS_MAX). A parked connection costs
// little (about 4 KiB, 13 over TLS) but not nothing, and fasthttp's own
// per-address count stops counting a connection once it is parked:
// unbounded, one address could open connections until the Pi ran out of
// memory or descriptors. A connection over a bound is closed as soon as
// it is accepted, before a byte is read. The default bounds:
const (
	// maxConnsPerAddr bounds one client address's connections (an IPv6
	// host's /64, as for rate limits): far above a browser's 6 per host,
	// and the phones behind one home's NAT.
	maxConnsPerAddr = 256
	// maxConns bounds them all, parked or served.
	maxConns = 16384
)

// connLimit counts the open client connections.
type connLimit struct {
	perAddr, total int
	// exempt says an address is a trusted proxy's, whose connections
	// carry many clients: only the total bounds them.
	exempt  func(ip string) bool
	refused prometheus.Counter

	mu     sync.Mutex
	byAddr map[netip.Addr]int
	open   int
}

func newConnLimit(perAddr, total int, exempt func(string) bool, refused prometheus.Counter) *connLimit {
	return &connLimit{perAddr: perAddr, total: total, exempt: exempt, refused: refused, byAddr: map[netip.Addr]int{}}
}

// connAddr is the address a connection counts against: its IPv4 address
// (an IPv4-mapped one unmapped), or its IPv6 /64.
func connAddr(c net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{} // not TCP: one key for all such
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip
}

// admit counts a new connection from addr, or refuses it over a bound.
func (l *connLimit) admit(addr netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.byAddr[addr]
	if l.open >= l.total || (n >= l.perAddr && !l.exempt(addr.String())) {
		l.refused.Inc()
		return false
	}
	l.byAddr[addr] = n + 1
	l.open++
	return true
}

// release counts a connection from addr closed.
func (l *connLimit) release(addr netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.byAddr[addr] - 1; n > 0 {
		l.byAddr[addr] = n
	} else {
		delete(l.byAddr, addr)
	}
	l.open--
}

// counted admits c under the limit, for a listener the parker does not
// serve (the plain-HTTP port's), so one address cannot hold more there,
// nor on the two listeners together; nil over a bound.
func (l *connLimit) counted(c net.Conn) net.Conn {
	addr := connAddr(c)
	if !l.admit(addr) {
		return nil
	}
	return &limitedConn{Conn: c, limit: l, addr: addr}
}

// limitedConn counts itself closed once, however often it is closed.
type limitedConn struct {
	net.Conn
	limit  *connLimit
	addr   netip.Addr
	closed atomic.Bool
}

// CloseWrite ends the sending side, which net/http's server does after an
// error answer (a 431) so that the client reads it before the close
// rather than wait half a second for it.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	if !c.closed.Swap(true) {
		c.limit.release(c.addr)
	}
	return err
}
