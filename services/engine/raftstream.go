package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pickme/lucid/pkg/meshtls"
)

// raftTimeout bounds one Raft RPC, and a dial to a peer with its handshake.
const raftTimeout = 10 * time.Second

// Handshakes of connections peers opened are done by the stream layer
// itself, before Raft sees the connection: Raft gives every connection it
// accepts a goroutine and some 260 KiB of buffers at once, so handing it
// connections that have not proved anything would let anyone who reaches
// the port exhaust the engine's memory with silent connections. Here a
// handshake costs a goroutine and a TLS state, it has handshakeTimeout,
// and only so many may be pending, in all and from one address; beyond
// that a new connection is closed at once (a real peer dials again). The
// address of a server of the Raft configuration is held to its own bound
// only, not the total: a LAN host with a few addresses could otherwise
// keep every slot taken and the engines from reaching each other.
const (
	handshakeTimeout     = 5 * time.Second
	maxPendingHandshakes = 64
	maxPendingPerAddress = 8
)

// raftStream is the Raft transport's stream layer over mutual TLS with the
// engine's mesh identity: both ends must hold a mesh certificate for the
// engine's own service, so neither another Lucid service nor anything
// outside the mesh can vote, append entries or install a snapshot. The TLS
// configurations take the identity's current leaf and trust bundle at every
// handshake, so a renewal or a root rotation needs nothing here. After the
// handshake each end names its chain (chainLine) and refuses a peer of
// another: the identity says "an engine", not "an engine of this chain",
// and Pis whose mesh controllers share a CA may run different chains.
type raftStream struct {
	ln        net.Listener // plain TCP: the handshakes are this layer's
	server    *tls.Config  // nil: accept nothing (a transport that only dials)
	client    *tls.Config
	advertise net.Addr
	timeout   time.Duration // of a handshake
	chain     string        // LUCID_CHAIN_ID: a peer must name the same

	ready chan net.Conn // connections whose handshake succeeded
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	pending map[string]int // handshakes in progress, by remote address
	total   int
	// peer, once set (trustPeers), says whether a remote address is a
	// server's of the Raft configuration.
	peer atomic.Pointer[func(host string) bool]
}

// trustPeers gives the stream the way to know the cluster's servers.
func (s *raftStream) trustPeers(peer func(host string) bool) { s.peer.Store(&peer) }

var _ raft.StreamLayer = (*raftStream)(nil)

// raftTLS is the TLS of Raft between engines holding id's identity.
func raftTLS(id *meshtls.Identity) (server, client *tls.Config) {
	peers := sameService(id.Service())
	server = id.ServerTLS(peers)
	// ServerTLS lets a client without a certificate through, for health
	// checks and scrapes; Raft has no such client, so a certificate is
	// required before any byte of Raft is read.
	server.ClientAuth = tls.RequireAnyClientCert
	return server, id.ClientTLS(peers)
}

// listenRaftTLS listens on bind for Raft peers over mTLS as id; advertise
// (nil: the listener's address) is the address the other nodes reach.
func listenRaftTLS(bind string, advertise net.Addr, id *meshtls.Identity, chain string) (*raftStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	server, client := raftTLS(id)
	return newRaftStream(ln, advertise, server, client, handshakeTimeout, chain), nil
}

// newRaftStream serves ln: it accepts connections and completes their
// handshakes as server, within timeout, and dials as client, for the
// engines of chain.
func newRaftStream(ln net.Listener, advertise net.Addr, server, client *tls.Config, timeout time.Duration, chain string) *raftStream {
	s := &raftStream{ln: ln, server: server, client: client, advertise: advertise, timeout: timeout, chain: chain,
		ready: make(chan net.Conn), done: make(chan struct{}), pending: map[string]int{}}
	go s.acceptLoop()
	return s
}

// sameService authorizes only peers that hold service's own identity: the
// other nodes of the cluster.
func sameService(service string) meshtls.Authorizer {
	return func(peer string) bool { return peer == service }
}

func (s *raftStream) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: wait a little, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return
			}
			continue
		}
		backoff = 0
		addr := remoteHost(c)
		if s.server == nil || !s.take(addr) {
			_ = c.Close()
			continue
		}
		go s.handshake(c, addr)
	}
}

// take counts a handshake from addr in, unless too many are pending: from
// addr, or in all from an address not a server's of the configuration.
// Only the accept loop takes, so the counts read are not raised meanwhile.
func (s *raftStream) take(addr string) bool {
	s.mu.Lock()
	full, over := s.total >= maxPendingHandshakes, s.pending[addr] >= maxPendingPerAddress
	s.mu.Unlock()
	if over {
		return false
	}
	if full {
		peer := s.peer.Load()
		if peer == nil || !(*peer)(addr) {
			return false
		}
	}
	s.mu.Lock()
	s.total++
	s.pending[addr]++
	s.mu.Unlock()
	return true
}

func (s *raftStream) give(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if s.pending[addr]--; s.pending[addr] == 0 {
		delete(s.pending, addr)
	}
}

// handshake completes c's handshake and hands it to Raft's Accept; a peer
// that fails it, or is too slow, is closed.
func (s *raftStream) handshake(c net.Conn, addr string) {
	tc := tls.Server(c, s.server)
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	err := tc.HandshakeContext(ctx) // closes c itself when ctx expires
	cancel()
	if err == nil {
		err = s.sameChain(tc, false, time.Now().Add(s.timeout))
	}
	s.give(addr)
	if err != nil {
		_ = tc.Close()
		return
	}
	select {
	case s.ready <- tc:
	case <-s.done:
		_ = tc.Close()
	}
}

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// Accept returns the next connection a peer opened, its handshake done.
func (s *raftStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.ready:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections already handed to Raft are Raft's.
func (s *raftStream) Close() error {
	s.once.Do(func() { close(s.done) })
	return s.ln.Close()
}

// Addr is the address the other nodes reach this one at.
func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.ln.Addr()
}

// Dial connects to a peer and completes the handshake, both within timeout.
func (s *raftStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = raftTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	if err := s.sameChain(c, true, deadline); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// chainLine is what each end sends after the handshake, before any byte
// of Raft: the protocol and its chain's id (LUCID_CHAIN_ID, which holds no
// newline), on one line.
const chainLine = "lucid-raft/1 "

// maxChainLine bounds the peer's line: an id is at most 63 characters.
const maxChainLine = 128

// sameChain exchanges chain lines on c, the dialling end first, by
// deadline, and refuses a peer of another chain.
func (s *raftStream) sameChain(c net.Conn, dialled bool, deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	send := func() error { _, err := io.WriteString(c, chainLine+s.chain+"\n"); return err }
	if dialled {
		if err := send(); err != nil {
			return err
		}
	}
	// One byte at a time: what follows the line is Raft's, not ours.
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("raft peer %s: no chain line: %w", c.RemoteAddr(), err)
		}
		if b[0] == '\n' {
			break
		}
		if line = append(line, b[0]); len(line) > maxChainLine {
			return fmt.Errorf("raft peer %s: a chain line of over %d bytes", c.RemoteAddr(), maxChainLine)
		}
	}
	peer, ok := strings.CutPrefix(string(line), chainLine)
	switch {
	case !ok:
		return fmt.Errorf("raft peer %s: not a Lucid Raft peer", c.RemoteAddr())
	case peer != s.chain:
		return fmt.Errorf("raft peer %s is an engine of chain %q, not of %q", c.RemoteAddr(), peer, s.chain)
	}
	if !dialled {
		if err := send(); err != nil {
			return err
		}
	}
	return c.SetDeadline(time.Time{})
}
