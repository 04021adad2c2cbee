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

// connAddr is a connection's peer address (an IPv4-mapped one unmapped).
func connAddr(c net.Conn) netip.Addr {
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{} // not TCP: one key for all such
	}
	return ap.Addr().Unmap().WithZone("")
}

// countedAs is the address a peer's connections count against: an IPv4
// address alone, an IPv6 one by its /64.
func countedAs(peer netip.Addr) netip.Addr {
	if peer.Is6() {
		p, _ := peer.Prefix(64)
		return p.Addr()
	}
	return peer
}

// admit counts a new connection from peer, or refuses it over a bound.
// Whether the peer is a trusted proxy is its own address's question, not
// its /64's: a trusted ::1 or 2001:db8::10 is exempt, the rest of its /64
// is not. An exempt peer's connections count in the total alone, not
// against its /64, whose other hosts keep their own bound.
func (l *connLimit) admit(peer netip.Addr) bool {
	exempt := l.exempt(peer.String())
	l.mu.Lock()
	defer l.mu.Unlock()
	key := countedAs(peer)
	n := l.byAddr[key]
	if l.open >= l.total || (!exempt && n >= l.perAddr) {
		l.refused.Inc()
		return false
	}
	if !exempt {
		l.byAddr[key] = n + 1
	}
	l.open++
	return true
}

// release counts a connection from peer closed.
func (l *connLimit) release(peer netip.Addr) {
	exempt := l.exempt(peer.String())
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if exempt {
		return
	}
	key := countedAs(peer)
	if n := l.byAddr[key] - 1; n > 0 {
		l.byAddr[key] = n
	} else {
		delete(l.byAddr, key)
	}
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
