package gateway

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pickme/lucid/internal/testenv"
)

// served reports whether a new connection to addr gets an answer to
// GET /health; the connection stays open (parked) until the test ends, or
// until the caller closes it.
func served(t *testing.T, addr string) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return answers(t, c, http.StatusOK)
}

// answers reports whether c gets an answer of status to GET /health; c
// stays open until the test ends, or until the caller closes it.
func answers(t *testing.T, c net.Conn, status int) (net.Conn, bool) {
	t.Helper()
	t.Cleanup(func() { _ = c.Close() })
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return c, false // closed under the write
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("no answer and no close: %v", err)
		}
		return c, false
	}
	_ = resp.Body.Close()
	return c, resp.StatusCode == status
}

// TestOneAddressHoldsBoundedConnections: one client address holds at most
// its share of connections, served or parked; the next is closed unread,
// and a closed one frees its place. A trusted proxy's address is bounded
// only by the total.
func TestOneAddressHoldsBoundedConnections(t *testing.T) {
	if !canPeek {
		t.Skip("connections are counted where they are parked (Linux)")
	}
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"LUCID_CONNS_PER_ADDRESS": "4"})
	addr := strings.TrimPrefix(g.url, "http://")
	var held []net.Conn
	for i := range 4 {
		c, ok := served(t, addr)
		if !ok {
			t.Fatalf("connection %d of an address allowed 4 was not served", i+1)
		}
		held = append(held, c)
	}
	if _, ok := served(t, addr); ok {
		t.Fatal("a fifth connection of an address allowed 4 was served")
	}
	if n := testutil.ToFloat64(g.app.metrics.connsRefused); n != 1 {
		t.Errorf("refused connections counted %v, want 1", n)
	}
	_ = held[0].Close()
	testenv.Eventually(t, 10*time.Second, "a closed connection frees its place", func() bool {
		c, ok := served(t, addr)
		if ok {
			held[0] = c
		}
		return ok
	})

	// Behind a trusted proxy, the address is many clients'.
	g = startGateway(t, be.URL, map[string]string{"LUCID_TRUSTED_PROXIES": "127.0.0.1", "LUCID_CONNS_PER_ADDRESS": "2", "LUCID_CONNS_MAX": "4"})
	addr = strings.TrimPrefix(g.url, "http://")
	for i := range 4 {
		if _, ok := served(t, addr); !ok {
			t.Fatalf("connection %d of a trusted proxy was not served", i+1)
		}
	}
	if _, ok := served(t, addr); ok {
		t.Error("a connection over the total was served")
	}
}

// TestConnAddr: IPv4 addresses count alone, IPv4-mapped ones as their
// IPv4 address, and IPv6 ones by their /64.
func TestConnAddr(t *testing.T) {
	l := newConnLimit(1, 100, func(string) bool { return false }, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1:1000", "[::ffff:192.0.2.1]:2000"},
		{"[2001:db8:1:2::1]:1000", "[2001:db8:1:2:ffff::9]:2000"},
	} {
		a, b := connAddr(fakeConn{tc.a}), connAddr(fakeConn{tc.b})
		if countedAs(a) != countedAs(b) {
			t.Errorf("%s and %s count apart (%s, %s)", tc.a, tc.b, countedAs(a), countedAs(b))
		}
		if !l.admit(a) || l.admit(b) {
			t.Errorf("%s: the second connection of the address was admitted", tc.b)
		}
	}
	if a := connAddr(fakeConn{"[2001:db8:1:3::1]:1"}); !l.admit(a) {
		t.Error("another /64 was refused")
	}
	for _, s := range []string{"192.0.2.1:1", "[2001:db8:1:2::1]:1", "[2001:db8:1:3::1]:1"} {
		l.release(connAddr(fakeConn{s}))
	}
	if l.open != 0 || len(l.byAddr) != 0 {
		t.Errorf("after every release: %d open, %v", l.open, l.byAddr)
	}
}

// TestTrustedIPv6ProxyIsExempt: a trusted proxy reaching the gateway
// over IPv6 is bounded only by the total, as one over IPv4 is, while the
// rest of its /64 is not exempt with it.
func TestTrustedIPv6ProxyIsExempt(t *testing.T) {
	trusted := map[string]bool{"::1": true, "2001:db8::10": true, "10.0.0.1": true}
	l := newConnLimit(2, 100, func(ip string) bool { return trusted[ip] }, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
	for _, peer := range []string{"[::1]:4000", "[2001:db8::10]:4000", "10.0.0.1:4000"} {
		for i := range 5 {
			if !l.admit(connAddr(fakeConn{peer})) {
				t.Errorf("connection %d of trusted proxy %s was refused", i+1, peer)
			}
		}
	}
	// The trusted 2001:db8::10's connections do not use up its /64's
	// bound: another host there still gets its own two.
	n := 0
	for range 3 {
		if l.admit(connAddr(fakeConn{"[2001:db8::77]:4000"})) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("a neighbour in a trusted proxy's /64 got %d connections, want 2", n)
	}
	l = newConnLimit(2, 100, func(ip string) bool { return ip == "2001:db8::" }, prometheus.NewCounter(prometheus.CounterOpts{Name: "y"}))
	n = 0
	for range 5 {
		if l.admit(connAddr(fakeConn{"[2001:db8::99]:4000"})) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("a peer in the /64 of a trusted address, not trusted itself, got %d connections, want 2", n)
	}
}

// fakeConn is a connection with a remote address alone.
type fakeConn struct{ remote string }

func (fakeConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (fakeConn) Write(b []byte) (int, error) { return len(b), nil }
func (fakeConn) Close() error                { return nil }
func (fakeConn) LocalAddr() net.Addr         { return nil }
func (c fakeConn) RemoteAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(c.remote))
}
func (fakeConn) SetDeadline(time.Time) error      { return nil }
func (fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (fakeConn) SetWriteDeadline(time.Time) error { return nil }

// TestPlainPortSharesTheConnectionBound: the plain-HTTP port's connections
// count against the same bounds as the main listener's, so one address
// cannot hold more on the two together; one over is closed unread.
func TestPlainPortSharesTheConnectionBound(t *testing.T) {
	if !canPeek {
		t.Skip("connections are counted where they are parked (Linux)")
	}
	g, plain, ca := startHTTPSGateway(t, map[string]string{"LUCID_CONNS_PER_ADDRESS": "2"})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.RootPEM)
	c, err := tls.Dial("tcp", strings.TrimPrefix(g.url, "http://"), &tls.Config{RootCAs: roots, ServerName: "gw.lucid.test", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := answers(t, c, http.StatusOK); !ok {
		t.Fatal("the first connection, over TLS, was not served")
	}
	var pc net.Conn
	testenv.Eventually(t, 10*time.Second, "the plain port answering", func() bool {
		pc, err = net.Dial("tcp", plain)
		return err == nil
	})
	first, ok := answers(t, pc, http.StatusPermanentRedirect)
	if !ok {
		t.Fatal("the second connection, on the plain port, was not redirected")
	}
	pc, err = net.Dial("tcp", plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := answers(t, pc, http.StatusPermanentRedirect); ok {
		t.Fatal("a third connection of an address allowed 2 was served on the plain port")
	}
	if n := testutil.ToFloat64(g.app.metrics.connsRefused); n != 1 {
		t.Errorf("refused connections counted %v, want 1", n)
	}
	// A plain-port connection closed gives its place back.
	_ = first.Close()
	testenv.Eventually(t, 10*time.Second, "a closed connection frees its place", func() bool {
		pc, err := net.Dial("tcp", plain)
		if err != nil {
			return false
		}
		_, ok := answers(t, pc, http.StatusPermanentRedirect)
		return ok
	})
}

// TestLimitedConnClosesItsSendingSide: a plain-port connection ends its
// sending side as the TCP connection under it does (net/http's server
// does so after an error answer), and still reads.
func TestLimitedConnClosesItsSendingSide(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"})
	ll := admittingListener{Listener: ln, admit: newConnLimit(1, 1, func(string) bool { return false }, refused).counted}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ll.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cw, ok := server.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("a plain-port connection cannot close its sending side")
	}
	if _, err := io.WriteString(server, "answer"); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(client); err != nil || string(got) != "answer" {
		t.Fatalf("the client read %q, %v; want the answer, then EOF", got, err)
	}
	if _, err := io.WriteString(client, "more"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = server.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "more" {
		t.Fatalf("after CloseWrite the server read %q, %v", buf, err)
	}
}
