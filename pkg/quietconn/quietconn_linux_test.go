//go:build !386

package quietconn

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// quietPair is a connected loopback pair: the accepted side wrapped in a
// quietConn when quiet, else as net.Conn has it, the dialled side plain.
func quietPair(t testing.TB, quiet bool) (q, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	l := ln
	if quiet {
		l = Listener(ln)
	}
	q, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := q.(*quietConn); ok != quiet {
		t.Fatalf("accepted %T, want a *quietConn: %v", q, quiet)
	}
	t.Cleanup(func() { _ = q.Close(); _ = peer.Close() })
	return q, peer
}

// TestQuietConnReadsAndWritesAsNetConn: a quietConn carries bytes both
// ways intact, larger than the socket's buffers, and reports the end, a
// deadline, a closed connection and a peer that reset as net.Conn does;
// net.Conn itself passes the same checks.
func TestQuietConnReadsAndWritesAsNetConn(t *testing.T) {
	for name, quiet := range map[string]bool{"quiet": true, "netconn": false} {
		t.Run(name, func(t *testing.T) {
			q, peer := quietPair(t, quiet)

			// 8 MiB each way: the writer meets a full socket and waits
			// on the poller.
			data := make([]byte, 8<<20)
			_, _ = rand.Read(data)
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(io.LimitReader(peer, int64(len(data)))); got <- b }()
			if n, err := q.Write(data); err != nil || n != len(data) {
				t.Fatalf("write: %d, %v", n, err)
			}
			if b := <-got; !bytes.Equal(b, data) {
				t.Fatalf("the peer read %d bytes, not what was written", len(b))
			}
			go func() { _, _ = peer.Write(data) }()
			if b, err := io.ReadAll(io.LimitReader(q, int64(len(data)))); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("read %d bytes (%v), not what the peer wrote", len(b), err)
			}

			// A deadline ends a read as a timeout.
			if err := q.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			var ne net.Error
			var oe *net.OpError
			_, err := q.Read(make([]byte, 10))
			if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" {
				t.Fatalf("read past its deadline: %v, want a read timeout", err)
			}
			if err := q.SetReadDeadline(time.Time{}); err != nil {
				t.Fatal(err)
			}

			// The peer closes: what it sent, then the end.
			if _, err := peer.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			if err := peer.(*net.TCPConn).SetLinger(0); err != nil {
				t.Fatal(err)
			}
			if err := peer.Close(); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 10)
			n, err := q.Read(b)
			if err != nil && n == 0 {
				// A reset may come before the bytes are read.
				if !errors.As(err, &oe) || oe.Op != "read" {
					t.Fatalf("read from a peer that reset: %v, want a read error", err)
				}
			} else if string(b[:n]) != "bye" {
				t.Fatalf("read %q, %v; want bye", b[:n], err)
			}
			// Writing to a peer that reset fails (no SIGPIPE ends the test).
			werr := error(nil)
			for range 100 {
				if _, werr = q.Write([]byte("x")); werr != nil {
					break
				}
			}
			if werr == nil || !errors.As(werr, &oe) || oe.Op != "write" {
				t.Fatalf("writes to a peer that reset: %v, want a write error", werr)
			}

			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := q.Read(b); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read after close: %v, want %v", err, net.ErrClosed)
			}
		})
	}
}

// TestQuietConnEndsAtEOF: a peer that closes cleanly is io.EOF, raw too.
func TestQuietConnEndsAtEOF(t *testing.T) {
	q, peer := quietPair(t, true)
	if err := peer.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Read(make([]byte, 4)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read at the end: %d, %v; want 0, EOF", n, err)
	}
}

// TestQuietConnClosesItsSendingSide: CloseWrite ends what the peer reads,
// and the connection still reads what the peer sends.
func TestQuietConnClosesItsSendingSide(t *testing.T) {
	q, peer := quietPair(t, true)
	cw, ok := q.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", q)
	}
	if _, err := q.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(peer); err != nil || string(b) != "last" {
		t.Fatalf("the peer read %q, %v; want last, then the end", b, err)
	}
	if _, err := peer.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(q, b); err != nil || string(b) != "reply" {
		t.Fatalf("read %q, %v after CloseWrite; want reply", b, err)
	}
}

// BenchmarkQuietConn is a 100-byte ping-pong over loopback, read and
// written raw and through net.Conn.
func BenchmarkQuietConn(b *testing.B) {
	for name, quiet := range map[string]bool{"raw": true, "netconn": false} {
		b.Run(name, func(b *testing.B) {
			q, peer := quietPair(b, quiet)
			go func() { _, _ = io.Copy(peer, peer) }() // echo
			msg, buf := make([]byte, 100), make([]byte, 100)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := q.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(q, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
