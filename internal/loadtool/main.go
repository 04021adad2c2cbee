// Command loadtool is the helper of scripts/bench-gateway.sh: a trivial
// HTTP backend to proxy to, a bare fasthttp proxy (the floor of the
// library the gateway is built on: no checks, no headers of its own), a
// bare proxy on epoll event loops (the floor of a design with no
// goroutine per connection), and a holder of many idle keep-alive
// connections for measuring the gateway's memory per connection.
//
//	loadtool backend -addr 127.0.0.1:9000
//	loadtool proxy -addr 127.0.0.1:9001 -upstream 127.0.0.1:9000
//	loadtool eventloop -addr 127.0.0.1:9002 -upstream 127.0.0.1:9000
//	loadtool idle -url http://127.0.0.1:8080/api/v1/anchors/x -n 10000 -hold 10s -header "Authorization: Bearer ..."
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadtool backend|proxy|eventloop|idle [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "backend":
		err = backend(os.Args[2:])
	case "proxy":
		err = proxy(os.Args[2:])
	case "eventloop":
		err = eventLoop(os.Args[2:])
	case "idle":
		err = idle(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtool:", err)
		os.Exit(1)
	}
}

func backend(args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:9000", "listen address")
	_ = fs.Parse(args)
	body := []byte(`{"ok":true}`)
	return http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
}

// proxy forwards every request to upstream as it came, through
// fasthttp's HostClient, and answers what upstream answers: what fasthttp
// costs before the gateway does any work of its own.
func proxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:9001", "listen address")
	upstream := fs.String("upstream", "127.0.0.1:9000", "host:port to proxy to")
	_ = fs.Parse(args)
	hc := &fasthttp.HostClient{Addr: *upstream, MaxConns: 4096}
	return fasthttp.ListenAndServe(*addr, func(fc *fasthttp.RequestCtx) {
		resp := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseResponse(resp)
		if err := hc.Do(&fc.Request, resp); err != nil {
			fc.Error(err.Error(), http.StatusBadGateway)
			return
		}
		resp.CopyTo(&fc.Response)
	})
}

// idle opens n connections, makes one request on each (so each is a
// live keep-alive connection in the server), and holds them.
func idle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	raw := fs.String("url", "", "URL to request once per connection")
	n := fs.Int("n", 10000, "connections")
	hold := fs.Duration("hold", 10*time.Second, "how long to hold them")
	header := fs.String("header", "", "one extra header line")
	_ = fs.Parse(args)
	u, err := url.Parse(*raw)
	if err != nil {
		return err
	}
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\n"
	if *header != "" {
		req += *header + "\r\n"
	}
	req += "\r\n"
	conns := make([]net.Conn, 0, *n)
	for i := 0; i < *n; i++ {
		c, err := net.Dial("tcp", u.Host)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if _, err := io.WriteString(c, req); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("connection %d: %s", i, resp.Status)
		}
		conns = append(conns, c)
	}
	fmt.Println("holding", len(conns), "idle connections")
	time.Sleep(*hold)
	for _, c := range conns {
		c.Close()
	}
	return nil
}
