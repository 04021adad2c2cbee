package gateway

import (
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
	slowSrv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(3 * time.Second)
	})}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = slowSrv.Serve(ln) }()
	defer slowSrv.Close()
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

// TestUnavailableInstanceIsEjected: an instance answering 503 passes that
// answer on once, then sits out while the other instance serves.
func TestUnavailableInstanceIsEjected(t *testing.T) {
	sickSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer sickSrv.Close()
	live := newInstance(t, "live")
	be := newBackend(t)
	g := startGateway(t, be.URL, nil)
	g.app.pools["anchoring"].set(urls(mustURL(t, sickSrv.URL), mustURL(t, live.URL)))
	tok := g.token(t, "u", "enterprise")
	codes := map[int]int{}
	for i := 0; i < 10; i++ {
		resp, _ := g.get(t, "/api/v1/anchors/x", map[string]string{"Authorization": "Bearer " + tok})
		codes[resp.StatusCode]++
	}
	if codes[503] > 1 || codes[200] < 9 {
		t.Errorf("outcomes %v: the 503 instance should be out after its first answer", codes)
	}
}
