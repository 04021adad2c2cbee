package gateway

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// Reads and requests with bodies take one proxy path, but differ in what
// may be retried and how a body flows; each case here runs for both.
var proxyPaths = []struct {
	name, method string
}{{"read", http.MethodGet}, {"body", http.MethodPost}}

// idleConns closes the idle connections to the anchoring instance and
// returns a count of those there are later.
func idleConns(g *gw) func() int {
	c := g.app.pools["anchoring"].all[0].client
	c.CloseIdleConnections()
	return c.IdleConnsCount
}

// fastRequest is a request as the gateway's server hands it over, from
// remote (host:port), with hdr, and a body when body is not empty.
func fastRequest(tb testing.TB, method, remote string, hdr map[string]string, body string) *fasthttp.RequestCtx {
	tb.Helper()
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI("/api/v1/anchors/x")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if body != "" {
		req.SetBodyString(body)
		req.Header.SetContentLength(len(body))
	}
	addr, err := net.ResolveTCPAddr("tcp", remote)
	if err != nil {
		tb.Fatal(err)
	}
	fc := &fasthttp.RequestCtx{}
	fc.Init(&req, addr, nil)
	return fc
}

// TestOnlyBodilessReadsAreRetried: what may be sent twice, on another
// connection or instance, is an idempotent read without a body.
func TestOnlyBodilessReadsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		method, body string
		want         bool
	}{
		{http.MethodGet, "", true},
		{http.MethodHead, "", true},
		{http.MethodOptions, "", true},
		{http.MethodGet, "{}", false},
		{http.MethodPost, "", false},
		{http.MethodDelete, "", false},
	} {
		if got := bodilessRead(fastRequest(t, tc.method, "127.0.0.1:1", nil, tc.body)); got != tc.want {
			t.Errorf("%s (body %q): retried %v, want %v", tc.method, tc.body, got, tc.want)
		}
	}
}

// TestUpgradesAreRefused: no Lucid service switches protocols, and the
// gateway says so rather than pass on a request it cannot carry.
func TestUpgradesAreRefused(t *testing.T) {
	g := startGateway(t, newBackend(t).URL, nil)
	resp, body := g.get(t, "/api/v1/anchors/ws", map[string]string{
		"Authorization": "Bearer " + g.token(t, "u", auth.TierFree), "Connection": "Upgrade", "Upgrade": "websocket"})
	if resp.StatusCode != http.StatusNotImplemented || !strings.Contains(body, "upgrades") {
		t.Errorf("an upgrade: %d %s", resp.StatusCode, body)
	}
}

// TestProxySemantics: what reaches the upstream and what comes back, for
// reads and for requests with bodies alike.
func TestProxySemantics(t *testing.T) {
	var seen atomic.Pointer[http.Request]
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		seen.Store(r.Clone(context.Background()))
		h := w.Header()
		switch r.URL.Path {
		case "/api/v1/anchors/stream":
			// A stream: the first event must reach the client before the
			// upstream is done.
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "/api/v1/anchors/trailer":
			h.Set("Trailer", "X-Checksum")
			_, _ = io.WriteString(w, "body")
			h.Set("X-Checksum", "abc")
		case "/api/v1/anchors/cut-chunked":
			_, _ = io.WriteString(w, "hello")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case "/api/v1/anchors/cut":
			h.Set("Content-Length", "100")
			_, _ = io.WriteString(w, "only part")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		default:
			h.Set("Connection", "X-Internal")
			h.Set("X-Internal", "secret")
			h.Set("Keep-Alive", "timeout=5")
			h.Set("X-Request-ID", "from-upstream")
			h.Set("X-Answer", "42")
			_, _ = io.WriteString(w, "ok "+r.Method)
		}
	}))
	defer up.Close()
	g := startGateway(t, up.URL, map[string]string{"LUCID_RATE_ENTERPRISE": "100000"})
	tok := g.token(t, "alice", auth.TierEnterprise)

	for _, pp := range proxyPaths {
		t.Run(pp.name, func(t *testing.T) {
			do := func(ctx context.Context, path string, hdr map[string]string) *http.Response {
				t.Helper()
				var body io.Reader
				if pp.method == http.MethodPost {
					body = strings.NewReader("{}")
				}
				req, _ := http.NewRequestWithContext(ctx, pp.method, g.url+path, body)
				req.Header.Set("Authorization", "Bearer "+tok)
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					// What a proxy does when the upstream breaks off
					// before its answer has left the gateway.
					return &http.Response{StatusCode: 0, Body: io.NopCloser(errReader{err})}
				}
				return resp
			}

			idle := idleConns(g)
			resp := do(context.Background(), "/api/v1/anchors/x?a=1&b=%2F", map[string]string{
				"Connection": "X-Hop", "X-Hop": "1", "Proxy-Authorization": "Basic eA==", "Te": "trailers, deflate",
				"Forwarded": "for=6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Lucid-Tier": "enterprise",
				"X-Request-ID": "rid-1", "User-Agent": "lucid-test",
			})
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "ok "+pp.method {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			if n := idle(); n != 1 {
				t.Errorf("%s left %d idle upstream connections, want 1: the connection was not kept alive", pp.method, n)
			}
			r := seen.Load()
			if r.URL.RawQuery != "a=1&b=%2F" || r.URL.Path != "/api/v1/anchors/x" {
				t.Errorf("upstream got %s ? %s", r.URL.Path, r.URL.RawQuery)
			}
			for _, k := range []string{"X-Hop", "Proxy-Authorization", "Forwarded", "Authorization"} {
				if v := r.Header.Get(k); v != "" {
					t.Errorf("%s: %q reached the upstream", k, v)
				}
			}
			if r.Header.Get("Te") != "trailers" || r.Header.Get("User-Agent") != "lucid-test" {
				t.Errorf("end-to-end headers lost: Te %q, User-Agent %q", r.Header.Get("Te"), r.Header.Get("User-Agent"))
			}
			if r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" ||
				r.Header.Get("X-Forwarded-Host") != strings.TrimPrefix(g.url, "http://") {
				t.Errorf("forwarding headers: %v", r.Header)
			}
			if r.Header.Get(HeaderSub) != "alice" || r.Header.Get(HeaderTier) != "enterprise" || len(r.Header.Values(HeaderTier)) != 1 {
				t.Errorf("identity: %v", r.Header)
			}
			// The client is no trusted proxy: its own ID is replaced.
			if id := r.Header.Get("X-Request-ID"); id == "rid-1" || !service.ValidRequestID(id) || r.Host != strings.TrimPrefix(up.URL, "http://") {
				t.Errorf("request ID %q, Host %q", r.Header.Get("X-Request-ID"), r.Host)
			}
			if resp.Header.Get("X-Internal") != "" || resp.Header.Get("Keep-Alive") != "" {
				t.Errorf("hop-by-hop response headers relayed: %v", resp.Header)
			}
			if ids := resp.Header.Values("X-Request-ID"); len(ids) != 1 || ids[0] != r.Header.Get("X-Request-ID") || resp.Header.Get("X-Answer") != "42" {
				t.Errorf("response headers: %v", resp.Header)
			}
			if resp.Header.Get("RateLimit-Limit") == "" {
				t.Error("the gateway's own headers were lost")
			}

			// Streams are flushed as they come.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp = do(ctx, "/api/v1/anchors/stream", nil)
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || line != "first\n" {
				t.Errorf("stream: %q %v", line, err)
			}
			cancel()
			resp.Body.Close()

			resp = do(context.Background(), "/api/v1/anchors/trailer", nil)
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "body" || resp.Trailer.Get("X-Checksum") != "abc" {
				t.Errorf("trailer: body %q, trailer %v", body, resp.Trailer)
			}

			// An upstream that breaks off mid-body must not look like a
			// complete answer, with a length or without (chunked): the
			// client gets a short one (a body that streams has its status
			// out already) or, for a small body read whole before it is
			// relayed, the gateway's 502.
			for _, path := range []string{"/api/v1/anchors/cut", "/api/v1/anchors/cut-chunked"} {
				resp := do(context.Background(), path, nil)
				if _, err := io.ReadAll(resp.Body); err == nil && resp.StatusCode != http.StatusBadGateway {
					t.Errorf("%s: a cut-off body read as complete (%d)", path, resp.StatusCode)
				}
				resp.Body.Close()
			}
		})
	}
}

// TestFastPathKeepsAliveAndRecovers: sequential reads share one upstream
// connection; a kept-alive connection the upstream closed is replaced
// without failing the request or ejecting the instance; informational
// answers are skipped; HEAD has no body to wait for.
func TestFastPathKeepsAliveAndRecovers(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]bool{} // the gateway's connections that carried requests
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			mu.Lock()
			peers[r.RemoteAddr] = true
			mu.Unlock()
		}
		if r.URL.Path == "/api/v1/anchors/hints" {
			w.Header().Set("Link", "</x>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	g := startGateway(t, up.URL, map[string]string{"LUCID_RATE_ENTERPRISE": "100000"})
	hdr := map[string]string{"Authorization": "Bearer " + g.token(t, "u", auth.TierEnterprise)}
	for i := range 20 {
		if resp, body := g.get(t, "/api/v1/anchors/x", hdr); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	mu.Lock()
	if len(peers) != 1 {
		t.Errorf("20 sequential requests came over %d upstream connections, want 1", len(peers))
	}
	mu.Unlock()
	if resp, body := g.get(t, "/api/v1/anchors/hints", hdr); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("after 103 Early Hints: %d %q", resp.StatusCode, body)
	}
	if resp, body := g.request(t, http.MethodHead, "/api/v1/anchors/x", hdr); resp.StatusCode != 200 || body != "" || resp.ContentLength != 2 {
		t.Errorf("HEAD: %d %q length %d", resp.StatusCode, body, resp.ContentLength)
	}

	// Two upstreams that answer once per connection and hang up without
	// saying so: every reuse finds a dead connection. Two, so that an
	// ejection would show (a lone instance is never ejected).
	p := g.app.pools["anchoring"]
	p.set(urls(mustURL(t, oneShotUpstream(t, "", nil)), mustURL(t, oneShotUpstream(t, "", nil))))
	for i := range 6 {
		if resp, body := g.get(t, "/api/v1/anchors/again", hdr); resp.StatusCode != 200 || body != "/api/v1/anchors/again" {
			t.Fatalf("request %d over a closed keep-alive connection: %d %q", i, resp.StatusCode, body)
		}
	}
	if h := p.healthyURLs(g.app.now()); len(h) != 2 {
		t.Errorf("an instance was ejected for closing idle connections: %v healthy", h)
	}
}

// lateAnswer holds an upstream's unasked-for answer back until the test
// has received the real one (a send on answered), and says when it has
// been written (written).
type lateAnswer struct{ answered, written chan struct{} }

func newLateAnswer() *lateAnswer {
	return &lateAnswer{answered: make(chan struct{}), written: make(chan struct{})}
}

// oneShotUpstream serves one request per connection, answering 200 with
// the path, then writes after (if any: in the same segment as the answer,
// or once late says so) and hangs up; it returns its URL.
func oneShotUpstream(t *testing.T, after string, late *lateAnswer) string {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	return "http://" + rawUpstream(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		answer := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		switch {
		case after == "" || req.URL.Path == "/health": // the gateway's probes are not under test
		case late == nil:
			answer += after // in the same segment as the answer
		default:
			_, _ = io.WriteString(c, answer)
			select {
			case <-late.answered:
			case <-done:
				return
			}
			_, _ = io.WriteString(c, after)
			late.written <- struct{}{}
			return
		}
		_, _ = io.WriteString(c, answer)
	})
}

// rawUpstream serves each connection to a fresh loopback port with serve,
// on its own goroutine, and closes it after; it returns the address.
func rawUpstream(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestLateAnswerIsNotTheNextOnes: an upstream that sends a 408 on a
// kept-alive connection after its answer (as servers closing idle
// connections do) does not hand that 408 to the next client.
func TestLateAnswerIsNotTheNextOnes(t *testing.T) {
	const timeout = "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
	// Right behind the answer, it is read with it; a moment later, it
	// waits in the socket for the next request on that connection. Any
	// other unasked-for answer read with one is dropped too.
	for _, tc := range []struct {
		late      string
		afterward bool // written once the answer is in, not with it
	}{{timeout, false}, {timeout, true}, {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", false}} {
		var late *lateAnswer
		if tc.afterward {
			late = newLateAnswer()
		}
		g := startGateway(t, oneShotUpstream(t, tc.late, late), nil)
		hdr := map[string]string{"Authorization": "Bearer " + g.token(t, "u", auth.TierFree)}
		for i := range 4 {
			if resp, body := g.get(t, "/api/v1/anchors/x", hdr); resp.StatusCode != 200 || body != "/api/v1/anchors/x" {
				t.Fatalf("%q (afterward %t), request %d: %d %q", tc.late[:12], tc.afterward, i, resp.StatusCode, body)
			}
			if late == nil {
				continue
			}
			// The late answer is in the socket before the next request.
			select {
			case late.answered <- struct{}{}:
			case <-time.After(5 * time.Second):
				t.Fatalf("request %d: no upstream connection holds a late answer", i)
			}
			<-late.written
		}
	}
}

// TestClientLeavingReleasesTheUpstream: a client that gives up, while the
// upstream thinks or while it streams, ends the upstream request at once
// instead of at the route's timeout.
func TestClientLeavingReleasesTheUpstream(t *testing.T) {
	arrived, released := make(chan string, 4), make(chan string, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		if r.URL.Path == "/api/v1/anchors/stream" {
			_, _ = io.WriteString(w, "event\n")
			w.(http.Flusher).Flush()
		}
		arrived <- r.URL.Path
		select {
		case <-r.Context().Done():
			released <- r.URL.Path
		case <-time.After(20 * time.Second):
		}
	}))
	defer up.Close()
	g := startGateway(t, up.URL, nil)
	tok := g.token(t, "u", auth.TierEnterprise)
	for _, path := range []string{"/api/v1/anchors/think", "/api/v1/anchors/stream"} {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		firstEvent, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err == nil {
					close(firstEvent)
				}
				<-ctx.Done()
				resp.Body.Close()
			}
		}()
		<-arrived // the upstream holds the request
		if path == "/api/v1/anchors/stream" {
			<-firstEvent // and the client is reading the stream
		}
		cancel()
		<-done
		select {
		case got := <-released:
			if got != path {
				t.Errorf("released %s, want %s", got, path)
			}
		case <-time.After(3 * time.Second):
			t.Errorf("%s: the upstream request outlived its client", path)
		}
	}
}

// errReader fails every read with err.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// An https upstream outside the mesh (the Phase 1 auth service, say) is
// still called over TLS on the fast path, never in clear text.
func TestFastPathSpeaksTLSToHTTPSUpstreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	first := make(chan byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err == nil {
			first <- b[0]
		}
	}()
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	g.app.pools["auth"].set(urls(mustURL(t, "https://"+ln.Addr().String())))
	resp, _ := g.get(t, "/auth/login", nil)
	select {
	case b := <-first:
		if b != 0x16 { // a TLS handshake record
			t.Errorf("the upstream got %q first, not a TLS handshake", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream got nothing")
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d; the test upstream speaks no TLS, so 502 was expected", resp.StatusCode)
	}
}

// TestIdleConnectionsOutliveNoUpstream: the gateway drops an idle
// upstream connection before the services' own idle timeout would, so a
// request seldom meets one the upstream has just closed.
func TestIdleConnectionsOutliveNoUpstream(t *testing.T) {
	c := newHostClient(mustURL(t, "http://127.0.0.1:1"), nil)
	if c.MaxIdleConnDuration <= 0 || c.MaxIdleConnDuration >= idleTimeout {
		t.Errorf("idle upstream connections kept %s; the services close theirs after %s", c.MaxIdleConnDuration, idleTimeout)
	}
}

// TestConnectionCutForALeavingClientIsNotPooled: when the client watch
// sees its client leave after the answer is read but before the
// connection is let go, it cuts the connection (a past deadline); that
// connection must not go back to the pool, where it would fail the next
// request and eject a healthy instance. Both ways an answer is read
// whole: one of known length, and one without a length for an HTTP/1.0
// client.
func TestConnectionCutForALeavingClientIsNotPooled(t *testing.T) {
	up := upstreamFunc(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		if r.URL.Path == "/api/v1/anchors/chunked" {
			w.(http.Flusher).Flush() // no length: chunked upstream
			_, _ = io.WriteString(w, "second\n")
		}
	})
	for name, path := range map[string]string{"known length": "/api/v1/anchors/x", "HTTP/1.0, no length": "/api/v1/anchors/chunked"} {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, up.URL, nil)
			tok := g.token(t, "u", auth.TierEnterprise)
			h := map[string]string{"Authorization": "Bearer " + tok}
			// A first request puts a connection in the pool, so the next
			// ones reuse it.
			if resp, body := g.get(t, "/api/v1/anchors/x", h); resp.StatusCode != http.StatusOK {
				t.Fatalf("first request: %d %s", resp.StatusCode, body)
			}
			var once sync.Once
			answeredHook = func(c *call) { once.Do(c.watch.clientGone) }
			t.Cleanup(func() { answeredHook = nil })
			proto := "HTTP/1.1"
			if path == "/api/v1/anchors/chunked" {
				proto = "HTTP/1.0"
			}
			resp, body, _ := rawExchange(t, strings.TrimPrefix(g.url, "http://"), "GET "+path+" "+proto+"\r\nHost: x\r\nAuthorization: Bearer "+tok+"\r\n\r\n", nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("the request whose client was seen leaving: %d %s", resp.StatusCode, body)
			}
			for i := range 3 {
				if resp, body := g.get(t, "/api/v1/anchors/x", h); resp.StatusCode != http.StatusOK {
					t.Errorf("request %d after a connection was cut: %d %s", i+1, resp.StatusCode, body)
				}
			}
		})
	}
}
