package gateway

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// TestDeadInstanceIsRetriedAndEjected: with one of two instances dead, a
// GET is retried on the live one and succeeds; a POST is not retried (it
// may have had an effect) but the dead instance is ejected, so the next
// POST goes to the live one.
func TestDeadInstanceIsRetriedAndEjected(t *testing.T) {
	live := newInstance(t, "live")
	dead := "http://127.0.0.1:1"
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	p := g.app.pools["anchoring"]
	deadURL, liveURL := mustURL(t, dead), mustURL(t, live.URL)
	tok := g.token(t, "u", "enterprise")
	auth := map[string]string{"Authorization": "Bearer " + tok}

	for i := 0; i < 6; i++ {
		p.set(nil) // fresh health state each round
		p.set(urls(deadURL, liveURL))
		if resp, body := g.get(t, "/api/v1/anchors/x", auth); resp.StatusCode != 200 || body != "live" {
			t.Fatalf("GET with a dead instance: %d %q", resp.StatusCode, body)
		}
	}
	p.set(nil)
	p.set(urls(deadURL, liveURL))
	codes := map[int]int{}
	for i := 0; i < 4; i++ {
		req, _ := http.NewRequest(http.MethodPost, g.url+"/api/v1/anchors", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	if codes[502] > 1 || codes[200] < 3 {
		t.Errorf("POST outcomes %v: at most the first may fail, then the dead instance is out", codes)
	}
}

// TestSlowClientsAndSlowUpstreams: a slowloris client is cut off by the
// header timeout without holding up others, and a slow upstream gets a 504
// after the route's timeout while other routes keep answering.
func TestSlowClientsAndSlowUpstreams(t *testing.T) {
	slow := newInstance(t, "slow")
	release := make(chan struct{})
	defer close(release)
	slowSrv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Slower than any route's timeout: it answers only once the
		// gateway has given up, or the test is over.
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = slowSrv.Serve(ln) }()
	defer func() {
		if err := slowSrv.Close(); err != nil {
			t.Errorf("close the slow upstream: %v", err)
		}
	}()
	_ = slow

	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	for i := range g.app.routes {
		if g.app.routes[i].Service == "blocks" {
			g.app.routes[i].Timeout = 500 * time.Millisecond
		}
	}
	// Rebuild with the short timeout on the blocks routes.
	g2 := startGatewayWithRoutes(t, be.URL, g.app.routes)
	g2.app.pools["blocks"].set(urls(mustURL(t, "http://"+ln.Addr().String())))
	g2.now = time.Now()
	g2.app.now = time.Now
	tok := g2.token(t, "u", "enterprise")
	auth := map[string]string{"Authorization": "Bearer " + tok}

	// 50 slowloris connections: each sends half a request line and stalls.
	addr := strings.TrimPrefix(g2.url, "http://")
	var conns []net.Conn
	for i := 0; i < 50; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write([]byte("GET /api/v1/anchors/x HTTP/1.1\r\nHost: x\r\n"))
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	resp, body := g2.get(t, "/api/v1/blocks/1", auth)
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(body, CodeTimeout) {
		t.Errorf("slow upstream: %d %s", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the slow upstream held the client %s", d)
	}
	if resp, body := g2.get(t, "/api/v1/anchors/x", auth); resp.StatusCode != 200 {
		t.Errorf("other routes during slowloris and a slow upstream: %d %s", resp.StatusCode, body)
	}
	// The stalled connections are closed by the server's header timeout.
	testenv.Eventually(t, 10*time.Second, "slowloris connections closed", func() bool {
		_ = conns[0].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := io.ReadAll(conns[0])
		return err == nil // EOF: the server closed it
	})
}

// TestClientCaused5xxDoesNotEject: a service's own 503 (an audit already
// running, a full mempool) is an answer, not a failure of the instance; it
// goes back to the client and the instance stays in rotation.
func TestClientCaused5xxDoesNotEject(t *testing.T) {
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer busy.Close()
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	g.app.pools["anchoring"].set(urls(mustURL(t, busy.URL)))
	tok := g.token(t, "u", "enterprise")
	for i := 0; i < 5; i++ {
		resp, body := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok})
		if resp.StatusCode != 503 || strings.Contains(body, "no healthy") {
			t.Fatalf("request %d: %d %s; want the upstream's own 503 every time", i, resp.StatusCode, body)
		}
	}
}

// TestForwardingAndGuessing: X-Forwarded-For from a trusted proxy is read
// across all its lines (a client's own line cannot win), bad tokens count
// against the client's address, and a stripped path cannot climb out.
func TestForwardingAndGuessing(t *testing.T) {
	be := newBackend(t)
	g := startGateway(t, be.URL, map[string]string{"LUCID_TRUSTED_PROXIES": "127.0.0.1", "LUCID_RATE_FREE": "60"})
	fc := fastRequest(t, http.MethodGet, "127.0.0.1:5555", nil, "")
	fc.Request.Header.Add("X-Forwarded-For", "9.9.9.9")
	fc.Request.Header.Add("X-Forwarded-For", "5.5.5.5")
	if ip := g.app.clientIP(fc); ip != "5.5.5.5" {
		t.Errorf("client IP = %s, want 5.5.5.5 (the line the trusted proxy added)", ip)
	}
	codes := map[int]int{}
	for i := 0; i < 20; i++ {
		resp, _ := g.get(t, "/api/v1/blocks/1", map[string]string{"Authorization": "Bearer guess-" + strings.Repeat("x", i)})
		codes[resp.StatusCode]++
	}
	if codes[429] == 0 || codes[401] > 7 {
		t.Errorf("token guessing: %v; want 429 after the free burst", codes)
	}
	g.advance(time.Minute)
	tok := g.token(t, "u", "enterprise")
	for _, p := range []string{"/blockchain/..%2Fapi%2Fv1%2Fx", "/blockchain/%2e%2e/x", "/auth/../api/v1/blocks/1", "/api/v1/anchors/%2E%2E/blocks/1"} {
		resp, _ := g.get(t, p, map[string]string{"Authorization": "Bearer " + tok})
		if resp.StatusCode != 400 && resp.StatusCode != 404 {
			t.Errorf("%s: %d, want it refused", p, resp.StatusCode)
		}
	}
	if resp, body := g.get(t, "/blockchain/api/v1/a%2Fb", map[string]string{"Authorization": "Bearer " + tok}); resp.StatusCode != 200 || body != "upstream:/api/v1/a/b" {
		t.Errorf("escaped slash: %d %q", resp.StatusCode, body)
	} else if raw := be.lastRequest().URL.RawPath; raw != "/api/v1/a%2Fb" && be.lastRequest().RequestURI != "/api/v1/a%2Fb" {
		t.Errorf("escaped slash reached the upstream as %q (%q)", be.lastRequest().RequestURI, raw)
	}
}

// TestAnswersBeforeAnUploadReachTheClient: a request answered before its
// upload is done gets that answer, not a connection reset under the
// upload: refused by the gateway before forwarding (bad token, method,
// rate limit), or answered by an upstream that does not read the body
// (the test backend reads none).
func TestAnswersBeforeAnUploadReachTheClient(t *testing.T) {
	g := startGateway(t, newBackend(t).URL, map[string]string{"LUCID_RATE_FREE": "60"})
	tok := g.token(t, "u", "free")
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	body := bytes.Repeat([]byte("u"), 8<<20)
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodPut, "/api/v1/chunks", "nope", http.StatusUnauthorized},
		{http.MethodPost, "/api/v1/transactions", tok, http.StatusMethodNotAllowed},
		{http.MethodPut, "/api/v1/chunks", tok, http.StatusOK},              // 4 units of the burst of 6
		{http.MethodPut, "/api/v1/chunks", tok, http.StatusTooManyRequests}, // 4 more, with 2 left
	} {
		req, _ := http.NewRequest(tc.method, g.url+tc.path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tc.token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}
