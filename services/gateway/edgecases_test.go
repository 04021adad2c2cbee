package gateway

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
)

// TestCatchAllRouteHidesServiceInternals: through a catch-all route ("/"),
// stripped or not, an escaped spelling of /metrics or /ready, which is not
// the gateway's own path, does not reach the service's own endpoint.
func TestCatchAllRouteHidesServiceInternals(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "internal") })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "internal") })
	mux.HandleFunc("GET /api/v1/blocks", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "blocks") })
	up := upstreamFunc(t, mux.ServeHTTP)
	for _, strip := range []bool{false, true} {
		g := startGatewayWithRoutes(t, up.URL, []routetable.Route{{Prefix: "/", Service: "blocks", Strip: strip, Timeout: routetable.DefaultTimeout}})
		tok := map[string]string{"Authorization": "Bearer " + g.token(t, "u", auth.TierFree)}
		for _, p := range []string{"/%6Detrics", "/%72eady", "/%6detrics/x"} {
			if resp, body := g.get(t, p, tok); body == "internal" || resp.StatusCode != http.StatusNotFound {
				t.Errorf("strip=%v %s: %d %q, want 404", strip, p, resp.StatusCode, body)
			}
		}
		if resp, body := g.get(t, "/api/v1/blocks", tok); resp.StatusCode != http.StatusOK || body != "blocks" {
			t.Errorf("strip=%v: the route's own path: %d %q", strip, resp.StatusCode, body)
		}
	}
}

// TestEscapedLettersKeepTheirRoute: a path that escapes a letter of a
// route's prefix (/api/v1/%63hain) takes that route, as the service reads
// it as the prefix: not a shorter route to the same service under another
// policy (public, or other methods). The path goes upstream, and is
// signed, as the service reads it.
func TestEscapedLettersKeepTheirRoute(t *testing.T) {
	paths := make(chan string, 8)
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/chain/{id}", func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.EscapedPath()
		_, _ = io.WriteString(w, "chain "+r.Method+" sub="+r.Header.Get(HeaderSub))
	})
	up := upstreamFunc(t, mux.ServeHTTP)
	g := startGatewayWithRoutes(t, up.URL, []routetable.Route{
		{Prefix: "/", Service: "blocks", Public: true, Timeout: routetable.DefaultTimeout},
		{Prefix: "/api/v1/chain", Service: "blocks", Methods: []string{http.MethodGet}, Timeout: routetable.DefaultTimeout},
	})
	tok := map[string]string{"Authorization": "Bearer " + g.token(t, "alice", auth.TierFree)}
	for _, p := range []string{"/api/v1/chain/1", "/api/v1/%63hain/1", "/api/v1/%63%68%61in/1", "/%61pi/v1/chai%6e/1"} {
		if resp, body := g.get(t, p, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d %q, want 401 (the route of /api/v1/chain)", p, resp.StatusCode, body)
		}
		if resp, body := g.request(t, http.MethodDelete, p, tok); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("DELETE %s: %d %q, want 405 (the route of /api/v1/chain)", p, resp.StatusCode, body)
		}
		resp, body := g.get(t, p, tok)
		if resp.StatusCode != http.StatusOK || body != "chain GET sub=alice" {
			t.Fatalf("GET %s with a token: %d %q", p, resp.StatusCode, body)
		}
		if got := <-paths; got != "/api/v1/chain/1" {
			t.Errorf("GET %s reached the service as %s", p, got)
		}
	}
	// Escapes of anything but an unreserved byte stay as they came.
	if resp, _ := g.get(t, "/api/v1/chain/a%2Fb%20c", tok); resp.StatusCode != http.StatusOK {
		t.Fatalf("an escaped slash and space: %d", resp.StatusCode)
	}
	if got := <-paths; got != "/api/v1/chain/a%2Fb%20c" {
		t.Errorf("the upstream got %s", got)
	}
}

func TestPlainPath(t *testing.T) {
	for raw, want := range map[string]string{
		"/api/v1/chain":        "/api/v1/chain",
		"/a%2Fb%20c%25":        "/a%2Fb%20c%25",
		"/%61%62%7E%2d%2E%5f":  "/ab~-._",
		"/x%6":                 "/x%6",
		"/x%zz%61":             "/x%zza",
		"%41%C3%A9":            "A%C3%A9",
		"/%2e%2e/%2E%2E%2fetc": "/../..%2fetc",
		"/%":                   "/%",
	} {
		if got := string(plainPath([]byte(raw))); got != want {
			t.Errorf("plainPath(%q) = %q, want %q", raw, got, want)
		}
	}
	raw := []byte("/a%2Fb")
	if got := plainPath(raw); &got[0] != &raw[0] {
		t.Error("a path with nothing to write plainly was copied")
	}
}

// TestHeaderNamesWithSpacesStayBehind: a header whose name holds a space
// is not forwarded, as one with an underscore is not: a CGI-style upstream
// would read "X-Lucid Sub" as X-Lucid-Sub, which the gateway alone sets.
func TestHeaderNamesWithSpacesStayBehind(t *testing.T) {
	got := make(chan http.Header, 1)
	up := upstreamFunc(t, func(_ http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() })
	g := startGateway(t, up.URL, nil)
	resp, _, _ := rawExchange(t, strings.TrimPrefix(g.url, "http://"),
		"GET /auth/login HTTP/1.1\r\nHost: x\r\nX-Lucid Sub: mallory\r\nX-Kept: yes\r\n\r\n", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: the upstream refused what the gateway sent", resp.StatusCode)
	}
	h := <-got
	for k := range h {
		if strings.Contains(k, " ") || strings.EqualFold(k, "X-Lucid-Sub") {
			t.Errorf("the upstream got %q", k)
		}
	}
	if h.Get("X-Kept") != "yes" {
		t.Errorf("an ordinary header was dropped: %v", h)
	}
}

// TestHTTP10ClientsGetNoChunkedAnswer: an answer without a length reaches
// an HTTP/1.0 client whole, with a length and no Transfer-Encoding (RFC
// 9112 6.1); one over 1 MiB is 502, and one that does not end within the
// route's timeout (a follow stream) 504. An HTTP/1.1 client still gets
// the stream.
func TestHTTP10ClientsGetNoChunkedAnswer(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up := upstreamFunc(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/auth/big":
			for range 20 {
				_, _ = w.Write(bytes.Repeat([]byte("x"), 64<<10))
				w.(http.Flusher).Flush()
			}
		case "/auth/follow":
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			_, _ = io.WriteString(w, "first\n")
			w.(http.Flusher).Flush() // no length: chunked upstream
			_, _ = io.WriteString(w, "second\n")
		}
	})
	g := startGatewayWithRoutes(t, up.URL, []routetable.Route{{Prefix: "/auth", Service: "auth", Public: true, Timeout: 500 * time.Millisecond}})
	addr := strings.TrimPrefix(g.url, "http://")
	resp, body, _ := rawExchange(t, addr, "GET /auth/x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", nil)
	if len(resp.TransferEncoding) > 0 || resp.ContentLength != int64(len("first\nsecond\n")) || body != "first\nsecond\n" {
		t.Errorf("HTTP/1.0: Transfer-Encoding %v, length %d, body %q", resp.TransferEncoding, resp.ContentLength, body)
	}
	resp, _, _ = rawExchange(t, addr, "GET /auth/x HTTP/1.1\r\nHost: x\r\n\r\n", nil)
	if len(resp.TransferEncoding) == 0 {
		t.Error("HTTP/1.1: the stream was not passed on as one")
	}
	if resp, body, _ := rawExchange(t, addr, "GET /auth/big HTTP/1.0\r\nHost: x\r\n\r\n", nil); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "HTTP/1.0") {
		t.Errorf("HTTP/1.0, over 1 MiB: %d, %d bytes of body", resp.StatusCode, len(body))
	}
	if resp, body, _ := rawExchange(t, addr, "GET /auth/follow HTTP/1.0\r\nHost: x\r\n\r\n", nil); resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("HTTP/1.0, an answer that does not end: %d, %d bytes of body", resp.StatusCode, len(body))
	}
}

// TestRawPathBytesAreForwardedAsServicesReadThem: a path with bytes a
// path may not carry raw ("|", as browsers send it, "{", non-ASCII) goes
// upstream escaped, as a Go service reads it back, and the gateway's
// signature (the mesh off) is over that form, so the service's check
// passes; a path of ordinary bytes goes as sent.
func TestRawPathBytesAreForwardedAsServicesReadThem(t *testing.T) {
	type seen struct{ raw, escaped, caller string }
	got := make(chan seen, 1)
	up := upstreamFunc(t, func(_ http.ResponseWriter, r *http.Request) {
		got <- seen{r.RequestURI, r.URL.EscapedPath(), r.Header.Get(service.HeaderCaller)}
	})
	g := startGateway(t, up.URL, nil)
	tok := g.token(t, "alice", auth.TierPremium)
	signer := service.NewCallerSigner(nil, "gateway") // the test gateway's key
	for path, want := range map[string]string{
		"/api/v1/blocks/a|b":          "/api/v1/blocks/a%7Cb",
		"/api/v1/blocks/{x}":          "/api/v1/blocks/%7Bx%7D",
		"/api/v1/blocks/\xc3\xa9":     "/api/v1/blocks/%C3%A9",
		"/api/v1/blocks/a%7Cb":        "/api/v1/blocks/a%7Cb",
		"/api/v1/blocks/a%2Fb:c@d[e]": "/api/v1/blocks/a%2Fb:c@d[e]",
		"/api/v1/blocks/a%2Fb|c":      "/api/v1/blocks/a%2Fb%7Cc", // the escaped slash stays one
	} {
		resp, _, _ := rawExchange(t, strings.TrimPrefix(g.url, "http://"),
			"GET "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+tok+"\r\n\r\n", nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%q: status %d", path, resp.StatusCode)
			continue
		}
		s := <-got
		if s.raw != want || s.escaped != want {
			t.Errorf("%q went upstream as %q (read back as %q), want %q", path, s.raw, s.escaped, want)
		}
		if sig := signer.Sign(g.now, http.MethodGet, s.escaped, &service.Principal{Subject: "alice", Tier: auth.TierPremium}); s.caller != sig {
			t.Errorf("%q: signature %q is not over the path the service reads (%q)", path, s.caller, sig)
		}
	}
}

// TestLogsNameThePathAsSent: the access log and the refusal's log line
// name the path as the client sent it, not fasthttp's normalised one (a
// probe of /%2e%2e/ready logged as /api/ready could not be found).
func TestLogsNameThePathAsSent(t *testing.T) {
	var log testenv.SyncBuffer
	g := startGatewayLogging(t, newBackend(t).URL, nil, nil, slog.NewJSONHandler(&log, nil))
	const probe = "/api/v1/blocks/%2e%2e/%2e%2e/ready"
	resp, _, _ := rawExchange(t, strings.TrimPrefix(g.url, "http://"), "GET "+probe+" HTTP/1.1\r\nHost: x\r\n\r\n", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a climbing path: %d, want 400", resp.StatusCode)
	}
	testenv.Eventually(t, 10*time.Second, "the request's log lines", func() bool {
		return strings.Count(log.String(), `"path":"`+probe+`"`) == 2 // "request failed" and "request"
	})
}
