// Package quietconn reads and writes sockets without the Go runtime's
// system-call bookkeeping, for servers that answer small requests.
//
// Go's runtime takes every read and write for a system call that might
// block. Entering one wakes the scheduler's monitor thread (sysmon) if it
// went to sleep because every P was idle, which is where a server serving
// one client at a time is between requests; woken, the monitor polls every
// 20 µs for a while. Under load, a thread that stays in the kernel past one
// of those polls has its P handed to another thread, which the first must
// then get back. Neither helps a socket: it is non-blocking, so a read or
// write never waits in the kernel. Each is therefore made as a raw system
// call inside the connection's RawConn, which waits on the runtime's
// poller, deadlines and all, when the socket is not ready, as net.Conn's
// own Read and Write do, and reports errors as they do.
//
// Measured in docs/gateway.md (Tuning): the gateway spends about a quarter
// less CPU per request at one connection and a tenth less at 16, the
// anchoring service (net/http) about an eighth less at one connection.
package quietconn

import "net"

// Listener wraps each connection ln accepts with Wrap.
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}
