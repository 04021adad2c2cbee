//go:build !386

package quietconn

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// On linux/386 sendto is no system call of its own, and sockets are read
// and written as net.Conn does (quietconn_other.go).

// quietConn is a socket read and written raw.
type quietConn struct {
	net.Conn
	raw syscall.RawConn

	// The read and the write in progress, each under its own lock (a body
	// may stream out while its answer is read), for the functions RawConn
	// calls with the descriptor: method values made once, not a closure
	// per call.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
}

// Wrap returns c, a socket, read and written raw; anything else is
// returned as it is.
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	q := &quietConn{Conn: c, raw: raw}
	q.readFn, q.writeFn = q.read, q.write
	return q
}

// SyscallConn is the socket's, for callers that wait on it or read its
// options (the gateway's client watch and idle parking).
func (c *quietConn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// CloseWrite shuts the socket's sending side, as net.TCPConn's does:
// net/http's server sends an error answer and then a FIN, not a reset.
func (c *quietConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errors.ErrUnsupported}
}

func (c *quietConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return c.Conn.Read(b)
	}
	c.rmu.Lock()
	c.rbuf = b
	err := c.raw.Read(c.readFn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rn, c.rerr = nil, 0, nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// maxRawCall bounds the bytes one raw system call copies. A goroutine in
// one cannot be preempted, and a stop-the-world waits for it; a socket
// buffer of several MiB could take a millisecond. Net.Conn's calls are
// not bounded, but the runtime does not wait for them.
const maxRawCall = 64 << 10

// read is one read on fd: false asks RawConn to wait until it is readable.
func (c *quietConn) read(fd uintptr) bool {
	b := c.rbuf
	if len(b) > maxRawCall {
		b = b[:maxRawCall] // a short read, as any read may be
	}
	for {
		n, e := sysRead(fd, b)
		switch e {
		case 0:
			c.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rerr = c.opError("read", os.NewSyscallError("read", e))
		return true
	}
}

func (c *quietConn) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return c.Conn.Write(b)
	}
	c.wmu.Lock()
	c.wbuf, c.wn = b, 0
	err := c.raw.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf, c.wn, c.werr = nil, 0, nil
	c.wmu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case werr != nil:
		return n, werr
	}
	return n, nil
}

// write writes what is left of wbuf on fd, at most maxRawCall bytes a
// call: false asks RawConn to wait until it is writable.
func (c *quietConn) write(fd uintptr) bool {
	for len(c.wbuf) > 0 {
		b := c.wbuf
		if len(b) > maxRawCall {
			b = b[:maxRawCall]
		}
		n, e := sysWrite(fd, b)
		switch e {
		case 0:
			if n == 0 {
				// Never for a socket; were it to, no progress would be
				// made, as net.Conn reports it.
				c.werr = c.opError("write", io.ErrUnexpectedEOF)
				return true
			}
			c.wn += n
			c.wbuf = c.wbuf[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = c.opError("write", os.NewSyscallError("write", e))
			return true
		}
	}
	return true
}

// opError is err as net.Conn's own Read and Write report it: RawConn's
// wait says "raw-read" or "raw-write".
func (c *quietConn) opError(op string, err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		oe.Op = op
		return oe
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
