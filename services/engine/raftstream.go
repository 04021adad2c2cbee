package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pickme/lucid/pkg/meshtls"
)

// raftTimeout bounds one Raft RPC, a dial to a peer with its handshake, and
// the handshake of a connection a peer opened.
const raftTimeout = 10 * time.Second

// raftStream is the Raft transport's stream layer over mutual TLS with the
// engine's mesh identity: both ends must hold a mesh certificate for the
// engine's own service, so neither another Lucid service nor anything
// outside the mesh can vote, append entries or install a snapshot. The TLS
// configurations take the identity's current leaf and trust bundle at every
// handshake, so a renewal or a root rotation needs nothing here.
type raftStream struct {
	net.Listener // a TLS listener; Accept wraps its connections
	advertise    net.Addr
	client       *tls.Config
	// handshake bounds the handshake of an accepted connection.
	handshake time.Duration
}

var _ raft.StreamLayer = (*raftStream)(nil)

// listenRaftTLS listens on bind for Raft peers over mTLS as id; advertise
// (nil: the listener's address) is the address the other nodes reach.
func listenRaftTLS(bind string, advertise net.Addr, id *meshtls.Identity) (*raftStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	peers := sameService(id.Service())
	server := id.ServerTLS(peers)
	// ServerTLS lets a client without a certificate through, for health
	// checks and scrapes; Raft has no such client, so a certificate is
	// required before any byte of Raft is read.
	server.ClientAuth = tls.RequireAnyClientCert
	return &raftStream{
		Listener:  tls.NewListener(ln, server),
		advertise: advertise,
		client:    id.ClientTLS(peers),
		handshake: raftTimeout,
	}, nil
}

// sameService authorizes only peers that hold service's own identity: the
// other nodes of the cluster.
func sameService(service string) meshtls.Authorizer {
	return func(peer string) bool { return peer == service }
}

// Accept returns the next connection. Its handshake is left to the
// goroutine Raft serves the connection in (a peer that stays silent must
// not hold the accept loop), and is bounded there.
func (s *raftStream) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		_ = c.Close()
		return nil, fmt.Errorf("raft stream: accepted a %T, not a TLS connection", c)
	}
	return &handshakeFirst{Conn: tc, timeout: s.handshake}, nil
}

// Addr is the address the other nodes reach this one at.
func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.Listener.Addr()
}

// Dial connects to a peer and completes the handshake, both within timeout.
func (s *raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = raftTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{Config: s.client}
	return d.DialContext(ctx, "tcp", string(address))
}

// handshakeFirst is an accepted TLS connection whose first Read or Write
// completes the handshake within timeout, or closes the connection.
// crypto/tls would handshake on first use too, but without a bound.
type handshakeFirst struct {
	*tls.Conn
	timeout time.Duration
	once    sync.Once
	err     error
}

func (c *handshakeFirst) completeHandshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		// On timeout HandshakeContext closes the connection itself.
		if err := c.Conn.HandshakeContext(ctx); err != nil {
			_ = c.Conn.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("raft peer %s: no TLS handshake within %s", c.RemoteAddr(), c.timeout)
			}
			c.err = err
		}
	})
	return c.err
}

func (c *handshakeFirst) Read(b []byte) (int, error) {
	if err := c.completeHandshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *handshakeFirst) Write(b []byte) (int, error) {
	if err := c.completeHandshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
