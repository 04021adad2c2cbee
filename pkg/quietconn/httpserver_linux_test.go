//go:build !386

package quietconn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serveHTTP serves h with net/http on a quiet listener.
func serveHTTP(t *testing.T, h http.Handler) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(Listener(ln)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestHTTPServerKeepsAlive: net/http reads in the background while a
// handler runs and ends that read with a past deadline; the connection
// serves the next request, and the next.
func TestHTTPServerKeepsAlive(t *testing.T) {
	c := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	br := bufio.NewReader(c)
	for i := range 50 {
		if _, err := fmt.Fprintf(c, "GET /%d HTTP/1.1\r\nHost: x\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != fmt.Sprintf("/%d", i) {
			t.Fatalf("request %d: %q, %v", i, b, err)
		}
	}
}

// TestHTTPServerHijacks: a handler that takes the connection over reads
// and writes it.
func TestHTTPServerHijacks(t *testing.T) {
	c := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = conn.Close() }()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		if err := brw.Flush(); err != nil {
			t.Error(err)
			return
		}
		line, err := brw.ReadString('\n')
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = conn.Write([]byte("echo:" + line))
	}))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "echo:hello\n" {
		t.Fatalf("read %q, %v; want the echo", line, err)
	}
}

// TestHTTPServerAnswersThenCloses: a request net/http refuses (headers too
// large) gets its whole answer, then the end of the stream (CloseWrite's
// FIN), not a reset.
func TestHTTPServerAnswersThenCloses(t *testing.T) {
	c := serveHTTP(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	go func() {
		_, _ = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("y", 2<<20))
	}()
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 431")) {
		t.Fatalf("read %.40q, %v; want a 431, then the end", b, err)
	}
}
