package gateway

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
)

// parkEvents is the parker's gauge, reporting each park (+1) and each
// end of one (-1) on a channel, so tests wait for the event itself.
type parkEvents struct {
	prometheus.Gauge
	ch chan int
}

func (e *parkEvents) Inc() { e.Gauge.Inc(); e.ch <- 1 }
func (e *parkEvents) Dec() { e.Gauge.Dec(); e.ch <- -1 }

func (e *parkEvents) expect(t *testing.T, want int) {
	t.Helper()
	select {
	case got := <-e.ch:
		if got != want {
			t.Fatalf("parker event %+d, want %+d", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no parker event (want %+d)", want)
	}
}

// parkingServer serves, through a parker, an answer naming the request's
// connection (so a test can tell it is the same one) and scheme.
type parkingServer struct {
	addr   string
	events *parkEvents
	fs     *fasthttp.Server
	pk     *parker
	served chan struct{}
}

func startParking(t *testing.T, tlsConfig *tls.Config, idle time.Duration) *parkingServer {
	t.Helper()
	if !canPeek {
		t.Skip("idle connections are parked on Linux only")
	}
	ps := &parkingServer{events: &parkEvents{Gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parked"}), ch: make(chan int, 16)}, served: make(chan struct{})}
	ps.fs = &fasthttp.Server{
		Handler: func(fc *fasthttp.RequestCtx) {
			scheme := "http"
			if fc.IsTLS() {
				scheme = "https"
			}
			_, _ = io.WriteString(fc, scheme+" "+fc.RemoteAddr().String()+" "+string(fc.Path())+" "+string(fc.Request.Body()))
		},
		ReadTimeout: 5 * time.Second,
		IdleTimeout: idle,
	}
	ps.pk = newParker(ps.fs.ServeConn, ps.events)
	ps.fs.ConnState = ps.pk.connState
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ps.addr = ln.Addr().String()
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	go func() { defer close(ps.served); _ = ps.fs.Serve(admittingListener{Listener: ln, admit: ps.pk.wrap}) }()
	t.Cleanup(func() {
		ps.pk.close()
		_ = ps.fs.Shutdown()
		<-ps.served
	})
	return ps
}

// ask sends one request on c and reads its answer.
func ask(t *testing.T, c net.Conn, br *bufio.Reader, path, body string) string {
	t.Helper()
	if _, err := io.WriteString(c, request(path, body)); err != nil {
		t.Fatal(err)
	}
	return answer(t, br)
}

func request(path, body string) string {
	return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

func answer(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	return string(b)
}

func TestIdleConnectionsAreParkedAndServedAgain(t *testing.T) {
	ps := startParking(t, nil, time.Minute)
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	first := ask(t, c, br, "/one", "a")
	ps.events.expect(t, +1) // idle: parked

	// The next request comes in two writes, the second after the
	// connection is back with fasthttp: nothing of it is lost.
	req := request("/two", "body of two")
	if _, err := io.WriteString(c, req[:10]); err != nil {
		t.Fatal(err)
	}
	ps.events.expect(t, -1)
	if _, err := io.WriteString(c, req[10:]); err != nil {
		t.Fatal(err)
	}
	second := answer(t, br)
	ps.events.expect(t, +1)

	// Pipelined requests are served in order; the connection parks after.
	if _, err := io.WriteString(c, request("/three", "3")+request("/four", "4")); err != nil {
		t.Fatal(err)
	}
	ps.events.expect(t, -1)
	third, fourth := answer(t, br), answer(t, br)
	ps.events.expect(t, +1)

	local := c.LocalAddr().String()
	for i, got := range []string{first, second, third, fourth} {
		want := []string{"http " + local + " /one a", "http " + local + " /two body of two", "http " + local + " /three 3", "http " + local + " /four 4"}[i]
		if got != want {
			t.Errorf("answer %d = %q, want %q", i+1, got, want)
		}
	}
}

func TestParkedConnectionsEnd(t *testing.T) {
	ps := startParking(t, nil, 1500*time.Millisecond)

	// A client that closes while parked: the gateway closes its side.
	closer, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	ask(t, closer, bufio.NewReader(closer), "/x", "")
	ps.events.expect(t, +1)
	_ = closer.Close()
	ps.events.expect(t, -1)

	// One that says nothing for the idle timeout: closed then, not before
	// the idle time fasthttp would have given it.
	quiet, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	br := bufio.NewReader(quiet)
	ask(t, quiet, br, "/x", "")
	answered := time.Now()
	ps.events.expect(t, +1)
	ps.events.expect(t, -1)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read after the idle timeout: %v, want EOF", err)
	}
	if waited := time.Since(answered); waited < time.Second {
		t.Errorf("closed after %s idle, want the idle timeout (1.5s)", waited)
	}

	// The parker's close (the gateway stopping) closes what is parked.
	last, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	br = bufio.NewReader(last)
	ask(t, last, br, "/x", "")
	ps.events.expect(t, +1)
	ps.pk.close()
	ps.events.expect(t, -1)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read after the parker closed: %v, want EOF", err)
	}
}

func TestParkedTLSConnectionsStayTLS(t *testing.T) {
	ca := testenv.NewTestCA(t)
	cert, err := tls.X509KeyPair(ca.Issue(t, time.Now().Add(time.Hour), "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.RootPEM)
	ps := startParking(t, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, time.Minute)
	c, err := tls.Dial("tcp", ps.addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	br := bufio.NewReader(c)
	local := c.LocalAddr().String()
	if got, want := ask(t, c, br, "/one", ""), "https "+local+" /one "; got != want {
		t.Fatalf("answer %q, want %q", got, want)
	}
	ps.events.expect(t, +1)
	if got, want := ask(t, c, br, "/two", "2"), "https "+local+" /two 2"; got != want {
		t.Fatalf("answer after parking %q, want %q", got, want)
	}
	ps.events.expect(t, -1)
	ps.events.expect(t, +1)
}

// TestGatewayParksIdleClients: through the whole gateway, an idle client's
// connection is parked, and its next request on that connection is
// proxied as any other.
func TestGatewayParksIdleClients(t *testing.T) {
	if !canPeek {
		t.Skip("idle connections are parked on Linux only")
	}
	b := newBackend(t)
	g := startGateway(t, b.URL, nil)
	c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func(path string) string {
		t.Helper()
		req := "GET " + path + " HTTP/1.1\r\nHost: lucid\r\nAuthorization: Bearer " + g.token(t, "alice", auth.TierFree) + "\r\n\r\n"
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		return answer(t, br)
	}
	parked := func() float64 { return testutil.ToFloat64(g.app.metrics.parked) }
	if got := get("/api/v1/anchors/one"); got != "upstream:/api/v1/anchors/one" {
		t.Fatalf("first answer %q", got)
	}
	testenv.Eventually(t, 10*time.Second, "the idle connection parked", func() bool { return parked() == 1 })
	if got := get("/api/v1/anchors/two"); got != "upstream:/api/v1/anchors/two" {
		t.Fatalf("answer after parking %q", got)
	}
	if r := b.lastRequest(); r.Header.Get(HeaderSub) != "alice" {
		t.Errorf("upstream saw %s %q after parking, want alice", HeaderSub, r.Header.Get(HeaderSub))
	}
	testenv.Eventually(t, 10*time.Second, "the connection parked again", func() bool { return parked() == 1 })
}
