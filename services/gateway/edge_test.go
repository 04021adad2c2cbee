package gateway

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
)

// rawExchange sends head (a request line and headers, up to their blank
// line) and then body on a new connection to addr, and reads one answer.
// The connection stays open for the caller, with a 30-second deadline: an
// answer that does not come fails the test rather than hang it.
func rawExchange(t *testing.T, addr, head string, body []byte) (*http.Response, string, net.Conn) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	if len(body) > 0 {
		if _, err := conn.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%q: no answer: %v", strings.SplitN(head, "\r\n", 2)[0], err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp, string(b), &bufferedConn{Conn: conn, r: br}
}

// bufferedConn reads what rawExchange's reader had buffered first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// upstreamFunc is an upstream serving f, and the gateway's health checks.
func upstreamFunc(t *testing.T, f http.HandlerFunc) *httptest.Server {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			f(w, r)
		}
	}))
	t.Cleanup(be.Close)
	return be
}

// closedByServer reports whether the server ends conn, reading and
// dropping what it still sends: closed (EOF) or reset, not the test's
// deadline.
func closedByServer(conn net.Conn) bool {
	_, err := io.Copy(io.Discard, conn)
	return err == nil || errors.Is(err, syscall.ECONNRESET)
}

// TestOwnEndpointsBoundBodies: the gateway's own endpoints, and the 404 of
// a path no route claims, take no token, so a body that could be large
// is refused at once with 413 and the connection ended, never read; a
// small one is still answered as before.
func TestOwnEndpointsBoundBodies(t *testing.T) {
	g := startGateway(t, newBackend(t).URL, nil)
	addr := strings.TrimPrefix(g.url, "http://")
	// fasthttp reads the first 8 KiB of a body with a length before the
	// handler sees the request; the rest is never sent.
	first := []byte(strings.Repeat("a", 8<<10))
	for _, head := range []string{
		"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n",
		"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
		// A body without a length, which never ends.
		"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + strings.Repeat("a", 1024) + "\r\n",
	} {
		var sent []byte
		if strings.Contains(head, "Content-Length") {
			sent = first
		}
		resp, body, conn := rawExchange(t, addr, head, sent)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "LUCID_ERR_1013") || resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("%q: %d %s, want 413 with the request ID", strings.SplitN(head, "\r\n", 2)[0], resp.StatusCode, body)
		}
		if !closedByServer(conn) {
			t.Errorf("%q: the connection stays open after the 413", strings.SplitN(head, "\r\n", 2)[0])
		}
	}
	// The refusals are metered as any other answer.
	if _, metrics := g.get(t, "/metrics", nil); !strings.Contains(metrics, `lucid_http_requests_total{code="413",method="POST",route="unmatched"} 3`) {
		t.Error("the refusals are not in lucid_http_requests_total")
	}
	// A small body is read and answered by the path's own handler.
	resp, body, _ := rawExchange(t, addr, "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", []byte("hello"))
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a small body to an unknown path: %d %s, want 404", resp.StatusCode, body)
	}
}

// TestOwnEndpointsLogNothingOfABody: a request to the gateway's own
// endpoints that says Content-Length, which anyone may send, leaves no
// warning in the log (fasthttp's, for a streamed body read whole); a
// small body still reaches the handler.
func TestOwnEndpointsLogNothingOfABody(t *testing.T) {
	var log testenv.SyncBuffer
	g := startGatewayLogging(t, newBackend(t).URL, nil, nil, slog.NewJSONHandler(&log, nil))
	addr := strings.TrimPrefix(g.url, "http://")
	for _, req := range []struct{ head, body string }{
		{"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", ""},
		{"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", "hello"},
		{"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", "hello"},
	} {
		resp, body, _ := rawExchange(t, addr, req.head, []byte(req.body))
		if resp.StatusCode >= 500 {
			t.Errorf("%q: %d %s", strings.SplitN(req.head, "\r\n", 2)[0], resp.StatusCode, body)
		}
	}
	// The answers are written; a warning would have been logged before.
	if out := log.String(); strings.Contains(out, `"level":"WARN"`) {
		t.Errorf("warnings for requests with a body:\n%s", out)
	}
}

// TestProxiedBodiesAreBounded: a request body is at most maxBodyBytes. A
// longer Content-Length gets 413 before anything is forwarded; a body
// without a length is cut at the bound, the upstream exchange ended and
// the client answered 413, and the instance is not blamed for it.
func TestProxiedBodiesAreBounded(t *testing.T) {
	got := make(chan int64, 4)
	var entered atomic.Int32
	be := upstreamFunc(t, func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		n, _ := io.Copy(io.Discard, r.Body)
		got <- n
		_, _ = io.WriteString(w, "read "+strconv.FormatInt(n, 10))
	})
	g := startGateway(t, be.URL, nil)
	tok := g.token(t, "alice", auth.TierEnterprise)
	addr := strings.TrimPrefix(g.url, "http://")

	head := fmt.Sprintf("POST /api/v1/chunks/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", tok, maxBodyBytes+1)
	resp, body, conn := rawExchange(t, addr, head, []byte(strings.Repeat("a", 8<<10)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "at most 64 MiB") {
		t.Errorf("Content-Length over the bound: %d %s, want 413", resp.StatusCode, body)
	}
	if !closedByServer(conn) {
		t.Error("the connection stays open after the 413, its body unread")
	}
	if n := entered.Load(); n != 0 {
		t.Errorf("the upstream was sent %d requests", n)
	}

	// A chunked body that goes on past the bound, sent as the gateway
	// reads it.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = fmt.Fprintf(conn, "POST /api/v1/chunks/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n", tok)
		chunk := fmt.Appendf(nil, "%x\r\n%s\r\n", 1<<20, strings.Repeat("z", 1<<20))
		for range maxBodyBytes>>20 + 8 {
			if _, err := conn.Write(chunk); err != nil {
				return // the gateway has ended the connection
			}
		}
	}()
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("a chunked body past the bound: no answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "at most 64 MiB") {
		t.Errorf("a chunked body past the bound: %d %s, want 413", resp.StatusCode, b)
	}
	if n := <-got; n > maxBodyBytes {
		t.Errorf("the upstream read %d bytes, more than the bound", n)
	}
	// The instance is still in use: the client's fault is not the
	// upstream's.
	if resp, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 200 {
		t.Errorf("after the refusal: %d %s, want 200 from the same instance", resp.StatusCode, body)
	}
}

// TestClientLeavingMidUploadEndsTheExchange: a client that goes away while
// its body is still coming ends the upstream exchange at once, not at the
// route's timeout, and the instance is not blamed for it.
func TestClientLeavingMidUploadEndsTheExchange(t *testing.T) {
	ended := make(chan error, 1)
	be := upstreamFunc(t, func(_ http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		ended <- err
	})
	g := startGateway(t, be.URL, nil)
	tok := g.token(t, "alice", auth.TierEnterprise)
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(conn, "POST /api/v1/chunks/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s",
		tok, 10<<20, strings.Repeat("z", 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	// The upstream is reading the body; the client leaves.
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Error("the upstream read a whole body the client never sent")
		}
	case <-time.After(20 * time.Second): // the route's timeout is minutes
		t.Fatal("the upstream exchange still runs after the client left")
	}
	if resp, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 200 {
		t.Errorf("after the client left: %d %s, want 200 from the same instance", resp.StatusCode, body)
	}
}

// TestMalformedRequestLogsNoBytes: fasthttp's warning about a request it
// cannot parse quotes none of it, so a token in it stays out of the log,
// whichever part of the request is malformed; the warning still names the
// connection.
func TestMalformedRequestLogsNoBytes(t *testing.T) {
	const token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2VuLWJ5dGVz.c2lnbmF0dXJl"
	for name, head := range map[string]string{
		"another header broken": "GET /api/v1/anchors/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\nBroken Header : v\r\n\r\n",
		"no colon":              "GET /api/v1/anchors/x HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + token + "\r\n\r\n",
		"a DEL in the value":    "GET /api/v1/anchors/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\x7f\r\n\r\n",
		"no HTTP version":       "GET /api/v1/anchors/x\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			var log testenv.SyncBuffer
			g := startGatewayLogging(t, newBackend(t).URL, nil, nil, slog.NewJSONHandler(&log, nil))
			resp, _, _ := rawExchange(t, strings.TrimPrefix(g.url, "http://"), head, nil)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("a malformed request: %d, want 400", resp.StatusCode)
			}
			testenv.Eventually(t, 10*time.Second, "a warning about the malformed request", func() bool {
				return strings.Contains(log.String(), "error when reading request headers")
			})
			if strings.Contains(log.String(), "c2VjcmV0") || strings.Contains(log.String(), "Bearer") {
				t.Errorf("the log holds the request's token:\n%s", log.String())
			}
			if !strings.Contains(log.String(), strings.TrimPrefix(g.url, "http://")) {
				t.Errorf("the warning does not name the gateway's end of the connection:\n%s", log.String())
			}
		})
	}
}

// startHTTPSGateway starts a gateway serving HTTPS with a certificate for
// gw.lucid.test from a test CA, and its plain-HTTP port (plain), with env
// on top.
func startHTTPSGateway(t *testing.T, env map[string]string) (g *gw, plain string, ca *testenv.TestCA) {
	t.Helper()
	ca = testenv.NewTestCA(t)
	certPEM, keyPEM := ca.Issue(t, time.Now().Add(time.Hour), "gw.lucid.test")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	plain = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	all := map[string]string{"LUCID_TLS_CERT_FILE": certFile, "LUCID_TLS_KEY_FILE": keyFile, "LUCID_HTTP_ADDR": plain}
	maps.Copy(all, env)
	return startGateway(t, newBackend(t).URL, all), plain, ca
}

// TestPlainPortAndHSTSSettings: the plain-HTTP port answers a request
// whose body never comes within the header timeout instead of waiting for
// it, and a max-age of 0 sends no HSTS header at all.
func TestPlainPortAndHSTSSettings(t *testing.T) {
	g, plain, ca := startHTTPSGateway(t, map[string]string{"LUCID_HSTS_MAX_AGE": "0"})
	testenv.Eventually(t, 10*time.Second, "the plain port answering", func() bool {
		conn, err := net.Dial("tcp", plain)
		if err != nil {
			return false
		}
		_ = conn.Close()
		return true
	})
	// Both well within the header timeout, which would end them too.
	start := time.Now()
	resp, _, conn := rawExchange(t, plain, "POST /x HTTP/1.1\r\nHost: gw.lucid.test\r\nContent-Length: 100\r\n\r\n", nil)
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Errorf("plain POST: %d, want 308", resp.StatusCode)
	}
	if d := time.Since(start); d > headerTimeout-time.Second {
		t.Errorf("the plain port answered after %s, waiting for a body it drops", d)
	}
	if !closedByServer(conn) {
		t.Error("the plain port keeps a connection whose body never came")
	}
	if d := time.Since(start); d > headerTimeout-time.Second {
		t.Errorf("the plain port closed the connection after %s, waiting for a body it drops", d)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.RootPEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "gw.lucid.test", MinVersion: tls.VersionTLS12},
	}}
	r, err := client.Get(strings.Replace(g.url, "http://", "https://", 1) + "/health")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if v, ok := r.Header["Strict-Transport-Security"]; ok {
		t.Errorf("max-age 0: Strict-Transport-Security %q sent, want none", v)
	}
}

// TestClientThatStopsReadingIsCut: a client that reads a streamed answer
// slowly keeps it for longer than the send timeout; once it stops reading
// it loses its connection after the send timeout, and the upstream
// exchange behind it ends with it.
func TestClientThatStopsReadingIsCut(t *testing.T) {
	if !canPeek {
		t.Skip("client connections are wrapped, and given the send timeout, on Linux only")
	}
	ended := make(chan struct{})
	be := upstreamFunc(t, func(w http.ResponseWriter, _ *http.Request) {
		defer close(ended)
		chunk := []byte(strings.Repeat("f", 64<<10))
		for { // a follow stream that never ends by itself
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	g := startGatewayOn(t, nil, be.URL, nil, nil, slog.DiscardHandler, func(a *App) { a.sendTimeout = 3 * time.Second })
	tok := g.token(t, "alice", auth.TierEnterprise)
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /api/v1/anchors/follow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", tok); err != nil {
		t.Fatal(err)
	}
	// A slow reader, for longer than the send timeout: 64 KiB, then a
	// pause. (Socket buffers of a few MiB on loopback are given back to
	// the writer in large steps, so it is not much slower than that.)
	buf := make([]byte, 64<<10)
	pace := time.NewTicker(5 * time.Millisecond)
	defer pace.Stop()
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); <-pace.C {
		if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatalf("a client reading slowly was cut: %v", err)
		}
	}
	select {
	case <-ended:
		t.Fatal("the stream ended while its client was reading it")
	default:
	}
	// The client reads nothing from here on.
	select {
	case <-ended:
	case <-time.After(30 * time.Second): // the send timeout is 3 s here
		t.Fatal("the upstream still streams to a client that stopped reading")
	}
}

// TestClientBodyBound: exactly maxBodyBytes passes, with a length or
// without; one byte more does not; a body that ends before its length is
// the client's failure.
func TestClientBodyBound(t *testing.T) {
	for _, tc := range []struct {
		name        string
		size        int64
		length      int64
		wantFailure error
	}{
		{"at the bound, chunked", maxBodyBytes, -1, nil},
		{"at the bound, with its length", maxBodyBytes, maxBodyBytes, nil},
		{"over the bound, chunked", maxBodyBytes + 1, -1, errBodyTooLarge},
		{"short of its length", 10, 11, io.ErrUnexpectedEOF},
	} {
		b := &clientBody{r: io.LimitReader(zeros{}, tc.size), length: tc.length}
		n, _ := io.Copy(io.Discard, b)
		if !errors.Is(b.failed, tc.wantFailure) || (tc.wantFailure == nil && n != tc.size) {
			t.Errorf("%s: %d bytes passed, failure %v; want failure %v", tc.name, n, b.failed, tc.wantFailure)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestMalformedAnswerLogsNoBytes: an upstream answer whose headers cannot
// be parsed is a 502, and the log says so without quoting them (a
// Set-Cookie of the auth service's, say).
func TestMalformedAnswerLogsNoBytes(t *testing.T) {
	addr := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if r.URL.Path == "/health" {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nSet-Cookie: sid=SECRETCOOKIE\r\nContent-Length: nope\r\n\r\n")
			return
		}
	})
	var log testenv.SyncBuffer
	g := startGatewayLogging(t, "http://"+addr, nil, nil, slog.NewJSONHandler(&log, nil))
	tok := g.token(t, "alice", auth.TierEnterprise)
	if resp, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a malformed answer: %d %s, want 502", resp.StatusCode, body)
	}
	if !strings.Contains(log.String(), "malformed") || strings.Contains(log.String(), "SECRETCOOKIE") {
		t.Errorf("the log, which must say the answer was malformed and quote none of it:\n%s", log.String())
	}
}

func TestRedactQuoted(t *testing.T) {
	for in, want := range map[string]string{
		`error when serving connection "127.0.0.1:8080"<->"[::1]:5000": invalid header value "Bearer a\"b\\c"`: `error when serving connection "127.0.0.1:8080"<->"[::1]:5000": invalid header value "…"`,
		`cannot find whitespace in the first line of request "GET /x\r\nAuthorization: Bearer t\r\n"`:          `cannot find whitespace in the first line of request "…"`,
		`unsupported http version "HTTP/9" in "GET / HTTP/9"`:                                                  `unsupported http version "…" in "…"`,
		`no quotes here`: `no quotes here`,
	} {
		if got := redactQuoted(in); got != want {
			t.Errorf("redactQuoted(%s) = %s, want %s", in, got, want)
		}
	}
}
