package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The event-loop proxy the bench measures must proxy what the bench sends:
// many requests on kept-alive connections, each answered by the backend,
// and it must refuse what it does not carry rather than pass it on wrong.
func TestEventLoopProxies(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"path":%q,"host":%q}`, r.URL.Path, r.Host)
	}))
	defer backend.Close()
	upstream := strings.TrimPrefix(backend.URL, "http://")

	// A free port: taken, then given back for the proxy's own listeners.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	errc := make(chan error, 1)
	go func() { errc <- eventLoop([]string{"-addr", addr, "-upstream", upstream, "-loops", "2"}) }()

	// The loops listen before eventLoop starts serving, so the first dial
	// that succeeds is served; wait for it, or for eventLoop's error.
	var conn net.Conn
	for conn == nil {
		select {
		case err := <-errc:
			t.Fatalf("eventloop: %v", err)
		default:
		}
		conn, _ = net.Dial("tcp4", addr)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := range 100 {
		path := fmt.Sprintf("/api/v1/anchors/%d", i)
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: client.example\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`{"path":%q,"host":%q}`, path, upstream); resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("request %d: %d %s, want 200 %s", i, resp.StatusCode, body, want)
		}
	}

	// A body is not carried: the connection is closed, nothing is sent on.
	post, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer post.Close()
	if _, err := fmt.Fprint(post, "POST /api/v1/anchors HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(post); err != nil || len(b) != 0 {
		t.Fatalf("a request with a body got %q (%v), want the connection closed", b, err)
	}
}
