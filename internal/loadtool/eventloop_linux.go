//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"runtime"
	"slices"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// eventLoop is a reverse proxy with no goroutine per connection: nginx's
// design, in Go. Each loop is one locked OS thread with its own epoll set,
// its own SO_REUSEPORT listener and its own kept-alive connections to the
// upstream, as each nginx worker has. Requests and answers are parsed and
// written again with fasthttp's header types, as the gateway and the bare
// fasthttp proxy do, so only the I/O model differs from that proxy: it is
// the floor of the other foundation the gateway could stand on
// (docs/gateway.md, "Figures"). It carries what the bench sends and no
// more: requests without a body, answers with a Content-Length, each small
// enough to be written in one go.
func eventLoop(args []string) error {
	fs := flag.NewFlagSet("eventloop", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:9002", "listen address (IPv4)")
	upstream := fs.String("upstream", "127.0.0.1:9000", "host:port to proxy to (IPv4)")
	loops := fs.Int("loops", runtime.NumCPU(), "event loops, one thread each")
	_ = fs.Parse(args)
	listen, err := sockaddr(*addr)
	if err != nil {
		return err
	}
	up, err := sockaddr(*upstream)
	if err != nil {
		return err
	}
	errc := make(chan error, *loops)
	for range *loops {
		l := &evLoop{conns: map[int]*evConn{}, upstream: up, upstreamHost: *upstream, buf: make([]byte, 64<<10)}
		if err := l.listen(listen); err != nil {
			return err
		}
		go func() {
			runtime.LockOSThread()
			errc <- l.run()
		}()
	}
	return <-errc
}

func sockaddr(hostport string) (*unix.SockaddrInet4, error) {
	a, err := net.ResolveTCPAddr("tcp4", hostport)
	if err != nil {
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: a.Port}
	copy(sa.Addr[:], a.IP.To4())
	return sa, nil
}

// evConn is a client's connection, or one to the upstream. While a request
// is in flight, the client and the upstream connection point at each other.
type evConn struct {
	fd       int
	upstream bool
	in       []byte // read, not yet used
	peer     *evConn
}

type evLoop struct {
	ep, lfd      int
	conns        map[int]*evConn
	idle         []*evConn // upstream connections kept alive
	upstream     *unix.SockaddrInet4
	upstreamHost string
	buf, out     []byte
	req          fasthttp.RequestHeader
	resp         fasthttp.ResponseHeader
	src          bytes.Reader
	br           *bufio.Reader
}

func (l *evLoop) listen(sa *unix.SockaddrInet4) error {
	var err error
	if l.lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(l.lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return err
	}
	if err := unix.Bind(l.lfd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(l.lfd, 4096); err != nil {
		return err
	}
	if l.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return err
	}
	l.br = bufio.NewReaderSize(&l.src, 8<<10)
	return unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, l.lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.lfd)})
}

func (l *evLoop) run() error {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(l.ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == l.lfd {
				l.accept()
			} else if c := l.conns[int(ev.Fd)]; c != nil {
				l.readable(c)
			}
		}
	}
}

func (l *evLoop) accept() {
	for {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		l.add(&evConn{fd: fd})
	}
}

func (l *evLoop) add(c *evConn) {
	l.conns[c.fd] = c
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.fd, &ev) != nil {
		l.close(c)
	}
}

// close closes c and the connection paired with it, whose exchange cannot
// finish. An idle upstream connection leaves the idle list: its descriptor's
// number may soon be another connection's.
func (l *evLoop) close(c *evConn) {
	delete(l.conns, c.fd)
	_ = unix.Close(c.fd)
	if i := slices.Index(l.idle, c); i >= 0 {
		l.idle = slices.Delete(l.idle, i, i+1)
	}
	if p := c.peer; p != nil {
		c.peer, p.peer = nil, nil
		l.close(p)
	}
}

// readable reads all c has (the set is edge-triggered) and acts on it.
func (l *evLoop) readable(c *evConn) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		if n > 0 {
			c.in = append(c.in, l.buf[:n]...)
			if n < len(l.buf) {
				break
			}
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		l.close(c) // closed by the peer, or failed
		return
	}
	var err error
	if c.upstream {
		err = l.answer(c)
	} else {
		err = l.request(c)
	}
	if err != nil {
		l.close(c)
	}
}

var endOfHeaders = []byte("\r\n\r\n")

// parse reads into h the header that in holds, up to its blank line.
func (l *evLoop) parse(h interface{ Read(*bufio.Reader) error }, in []byte) error {
	l.src.Reset(in)
	l.br.Reset(&l.src)
	return h.Read(l.br)
}

// request sends the client's next whole request upstream, unless one is in
// flight.
func (l *evLoop) request(c *evConn) error {
	end := bytes.Index(c.in, endOfHeaders)
	if c.peer != nil || end < 0 {
		return nil
	}
	if err := l.parse(&l.req, c.in[:end+4]); err != nil {
		return err
	}
	if n := l.req.ContentLength(); n > 0 || n == -1 { // -1: chunked
		return errors.New("a request with a body")
	}
	l.req.SetHost(l.upstreamHost)
	u, err := l.upstreamConn()
	if err != nil {
		return err
	}
	l.out = l.req.AppendBytes(l.out[:0])
	if err := writeAll(u.fd, l.out); err != nil {
		l.close(u)
		return err
	}
	c.in = append(c.in[:0], c.in[end+4:]...)
	c.peer, u.peer = u, c
	return nil
}

// answer relays the upstream's answer to its client once it is whole, and
// keeps the connection for the next request.
func (l *evLoop) answer(u *evConn) error {
	end := bytes.Index(u.in, endOfHeaders)
	if end < 0 {
		return nil
	}
	if err := l.parse(&l.resp, u.in[:end+4]); err != nil {
		return err
	}
	n := l.resp.ContentLength()
	if n < 0 {
		return errors.New("an answer without a Content-Length")
	}
	if len(u.in) < end+4+n {
		return nil
	}
	c := u.peer
	if c == nil {
		return errors.New("an answer nobody asked for")
	}
	l.out = append(l.resp.AppendBytes(l.out[:0]), u.in[end+4:end+4+n]...)
	extra := len(u.in) > end+4+n
	u.in = u.in[:0]
	c.peer, u.peer = nil, nil
	if extra {
		l.close(u)
	} else {
		l.idle = append(l.idle, u)
	}
	if err := writeAll(c.fd, l.out); err != nil {
		l.close(c)
		return nil
	}
	if err := l.request(c); err != nil { // a pipelined one
		l.close(c)
	}
	return nil
}

// upstreamConn is a kept-alive upstream connection, or a new one. The
// connect blocks: the upstream is on loopback.
func (l *evLoop) upstreamConn() (*evConn, error) {
	if n := len(l.idle); n > 0 {
		u := l.idle[n-1]
		l.idle = l.idle[:n-1]
		return u, nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, l.upstream); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	u := &evConn{fd: fd, upstream: true}
	l.add(u)
	return u, nil
}

// writeAll writes b in one go; a socket whose buffer cannot take a small
// message is not worth waiting for here.
func writeAll(fd int, b []byte) error {
	n, err := unix.Write(fd, b)
	if err == nil && n < len(b) {
		err = errors.New("short write")
	}
	return err
}
