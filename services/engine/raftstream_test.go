package engine

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/service"
)

func openMeshCA(t testing.TB, opts meshca.Options) *meshca.CA {
	t.Helper()
	ca, err := meshca.Open(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func meshIdentity(t testing.TB, ca *meshca.CA, svc string, opts meshtls.Options) *meshtls.Identity {
	t.Helper()
	id, err := meshtls.Obtain(context.Background(), svc, meshtls.Local(ca), opts)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// logBuffer collects a node's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// rawNode is an engine node without its HTTP API (which, with a mesh
// identity, answers mTLS callers only), producing blocks while it leads.
type rawNode struct {
	*node
	log *logBuffer
}

func openRawNode(t testing.TB, cfg Config, id *meshtls.Identity) *rawNode {
	t.Helper()
	log := &logBuffer{}
	n, err := openNode(cfg, slog.New(slog.NewTextHandler(log, nil)), newMetrics(prometheus.NewRegistry()), id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.produce(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := n.close(); err != nil {
			t.Errorf("close %s: %v", cfg.NodeID, err)
		}
	})
	return &rawNode{node: n, log: log}
}

func waitLeads(t testing.TB, n *rawNode) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, n.cfg.NodeID+" leads with a block", func() bool {
		return n.isLeader() && n.store.Height() >= 1
	})
}

// TestRaftOverMTLS: three engines holding engine certificates of one mesh
// CA form a cluster over mTLS; a transaction submitted to the leader is
// sealed in a block every node holds.
func TestRaftOverMTLS(t *testing.T) {
	ca := openMeshCA(t, meshca.Options{})
	n1 := openRawNode(t, nodeConfig(t, "n1", true), meshIdentity(t, ca, "engine", meshtls.Options{}))
	waitLeads(t, n1)
	if !strings.Contains(n1.log.String(), "raft transport: mTLS with the mesh identity") {
		t.Errorf("the start does not say Raft runs over mTLS:\n%s", n1.log)
	}
	nodes := []*rawNode{n1}
	for _, name := range []string{"n2", "n3"} {
		n := openRawNode(t, nodeConfig(t, name, false), meshIdentity(t, ca, "engine", meshtls.Options{}))
		if err := n1.raft.AddVoter(raft.ServerID(name), raft.ServerAddress(n.cfg.RaftAdvertise), 0, 10*time.Second).Error(); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		nodes = append(nodes, n)
	}
	st := n1.submitOne(anchorJSON(1))
	if st.Status != engineapi.StatusPending {
		t.Fatalf("submit: %+v", st)
	}
	testenv.Eventually(t, 15*time.Second, "the transaction sealed on every node", func() bool {
		for _, n := range nodes {
			if !n.store.HasTx(st.ID) {
				return false
			}
		}
		return true
	})
	for _, n := range nodes[1:] {
		if leader, _ := n.raft.LeaderWithID(); string(leader) != n1.cfg.RaftAdvertise {
			t.Errorf("%s follows %q, want n1 at %s", n.cfg.NodeID, leader, n1.cfg.RaftAdvertise)
		}
	}
}

// lenient is a client that checks nothing of the server and presents id's
// leaf: only the node's own checks stand between it and Raft.
func lenient(id *meshtls.Identity) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.Certificate(), nil
		},
	}
}

// dialingTransport is a Raft transport that reaches others through
// client (nil: plain TCP), as an engine of the tests' chain, and serves
// nothing anyone dials.
func dialingTransport(t *testing.T, client *tls.Config) *raft.NetworkTransport {
	t.Helper()
	return dialingTransportOf(t, client, "test")
}

// dialingTransportOf is dialingTransport as an engine of chain.
func dialingTransportOf(t *testing.T, client *tls.Config, chain string) *raft.NetworkTransport {
	t.Helper()
	if client == nil {
		trans, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 5*time.Second, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = trans.Close() })
		return trans
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransport(newRaftStream(ln, nil, nil, client, handshakeTimeout, chain), 1, 5*time.Second, io.Discard)
	t.Cleanup(func() { _ = trans.Close() })
	return trans
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRaftRefusesStrangers: a peer without a certificate, with another
// service's, with an engine certificate of another CA, or speaking plain
// TCP, cannot complete a handshake with an engine's Raft port, and its
// votes and entries never reach Raft: the leader keeps its term and its
// log. An engine of the same mesh is answered.
func TestRaftRefusesStrangers(t *testing.T) {
	ca, otherCA := openMeshCA(t, meshca.Options{}), openMeshCA(t, meshca.Options{})
	n := openRawNode(t, nodeConfig(t, "solo", true), meshIdentity(t, ca, "engine", meshtls.Options{}))
	waitLeads(t, n)
	addr := raft.ServerAddress(n.cfg.RaftAdvertise)

	forge := func(trans *raft.NetworkTransport) (voteErr, appendErr error) {
		term, last := n.raft.CurrentTerm(), n.raft.LastIndex()
		header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte(trans.LocalAddr())}
		var vote raft.RequestVoteResponse
		voteErr = trans.RequestVote("solo", addr, &raft.RequestVoteRequest{
			RPCHeader: header, Term: term + 10, LastLogIndex: last + 100, LastLogTerm: term + 10,
		}, &vote)
		var app raft.AppendEntriesResponse
		appendErr = trans.AppendEntries("solo", addr, &raft.AppendEntriesRequest{
			RPCHeader: header, Term: term + 10, PrevLogEntry: last, PrevLogTerm: term, LeaderCommitIndex: last + 1,
			Entries: []*raft.Log{{Index: last + 1, Term: term + 10, Type: raft.LogCommand, Data: []byte("forged")}},
		}, &app)
		return voteErr, appendErr
	}
	untouched := func(t *testing.T, term uint64) {
		t.Helper()
		if got := n.raft.CurrentTerm(); got != term || !n.isLeader() {
			t.Fatalf("after a stranger's RPCs: term %d (was %d), state %s", got, term, n.raft.State())
		}
		for i := uint64(1); i <= n.raft.LastIndex(); i++ {
			var l raft.Log
			if err := n.raftDB.GetLog(i, &l); err == nil && string(l.Data) == "forged" {
				t.Fatalf("the forged entry is in the log at %d", i)
			}
		}
	}

	for name, client := range map[string]*tls.Config{
		"no certificate":                      {MinVersion: tls.VersionTLS13, InsecureSkipVerify: true},
		"the gateway's certificate":           lenient(meshIdentity(t, ca, "gateway", meshtls.Options{})),
		"an engine certificate of another CA": lenient(meshIdentity(t, otherCA, "engine", meshtls.Options{})),
	} {
		t.Run(name, func(t *testing.T) {
			// With TLS 1.3 the client's half of the handshake ends before
			// the server has judged its certificate: the refusal is the
			// alert that comes instead of anything else.
			conn, err := tls.Dial("tcp", string(addr), client)
			if err == nil {
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // a bound, not a wait: the alert comes at once
				_, err = conn.Read(make([]byte, 1))
				_ = conn.Close()
			}
			if err == nil || isTimeout(err) {
				t.Fatalf("the handshake was not refused: %v", err)
			}
			term := n.raft.CurrentTerm()
			voteErr, appendErr := forge(dialingTransport(t, client))
			if voteErr == nil || appendErr == nil || isTimeout(voteErr) || isTimeout(appendErr) {
				t.Fatalf("RPCs not refused: vote %v, append %v", voteErr, appendErr)
			}
			untouched(t, term)
		})
	}
	t.Run("plain TCP", func(t *testing.T) {
		term := n.raft.CurrentTerm()
		voteErr, appendErr := forge(dialingTransport(t, nil))
		if voteErr == nil || appendErr == nil {
			t.Fatalf("RPCs not refused: vote %v, append %v", voteErr, appendErr)
		}
		untouched(t, term)
	})
	t.Run("an engine of the same mesh on another chain", func(t *testing.T) {
		term := n.raft.CurrentTerm()
		peer := meshIdentity(t, ca, "engine", meshtls.Options{})
		voteErr, appendErr := forge(dialingTransportOf(t, peer.ClientTLS(sameService("engine")), "another-chain"))
		if voteErr == nil || appendErr == nil || isTimeout(voteErr) || isTimeout(appendErr) {
			t.Fatalf("RPCs not refused: vote %v, append %v", voteErr, appendErr)
		}
		untouched(t, term)
	})
	t.Run("an engine of the same mesh", func(t *testing.T) {
		peer := meshIdentity(t, ca, "engine", meshtls.Options{})
		trans := dialingTransport(t, peer.ClientTLS(sameService("engine")))
		var resp raft.RequestVoteResponse
		// Term 0: answered, and changes nothing.
		err := trans.RequestVote("solo", addr, &raft.RequestVoteRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("peer"), Addr: []byte(trans.LocalAddr())},
		}, &resp)
		if err != nil || resp.Term != n.raft.CurrentTerm() || resp.Granted {
			t.Fatalf("RequestVote from an engine: %+v %v", resp, err)
		}
	})
}

// TestRaftPlainWithoutIdentity: without a mesh identity Raft speaks plain
// TCP, as before the mesh, and says so; a TLS client is not understood.
func TestRaftPlainWithoutIdentity(t *testing.T) {
	n := openRawNode(t, nodeConfig(t, "solo", true), nil)
	waitLeads(t, n)
	if log := n.log.String(); !strings.Contains(log, "raft transport: plain TCP on loopback") || strings.Contains(log, "level=WARN") {
		t.Errorf("the start log of a loopback plain transport:\n%s", log)
	}
	trans := dialingTransport(t, nil)
	var resp raft.RequestVoteResponse
	err := trans.RequestVote("solo", raft.ServerAddress(n.cfg.RaftAdvertise), &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("peer"), Addr: []byte(trans.LocalAddr())},
	}, &resp)
	if err != nil || resp.Term != n.raft.CurrentTerm() {
		t.Fatalf("RequestVote over plain TCP: %+v %v", resp, err)
	}
}

// TestRaftPlainOffLoopbackWarns: plain Raft on an address other hosts
// reach starts, with a warning.
func TestRaftPlainOffLoopbackWarns(t *testing.T) {
	cfg := nodeConfig(t, "solo", true)
	_, port, _ := net.SplitHostPort(cfg.RaftAddr)
	cfg.RaftAddr = "0.0.0.0:" + port
	n := openRawNode(t, cfg, nil)
	if log := n.log.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "plain TCP on an address other hosts reach") {
		t.Errorf("no warning for plain Raft on %s:\n%s", cfg.RaftAddr, log)
	}
}

// TestRaftHandshakeIsBounded: a peer that connects and says nothing holds
// neither the accept loop (others are served meanwhile) nor, past the
// handshake bound, its connection.
func TestRaftHandshakeIsBounded(t *testing.T) {
	ca := openMeshCA(t, meshca.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, clientTLS := raftTLS(meshIdentity(t, ca, "engine", meshtls.Options{}))
	stream := newRaftStream(ln, nil, serverTLS, clientTLS, 300*time.Millisecond, "test")
	server := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: stream, MaxPool: 1, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger()})
	t.Cleanup(func() { _ = server.Close() })
	go func() {
		for rpc := range server.Consumer() {
			rpc.Respond(&raft.RequestVoteResponse{Term: 7}, nil)
		}
	}()

	silent, err := net.Dial("tcp", string(server.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	client := dialingTransport(t, meshIdentity(t, ca, "engine", meshtls.Options{}).ClientTLS(sameService("engine")))
	var resp raft.RequestVoteResponse
	if err := client.RequestVote("x", server.LocalAddr(), &raft.RequestVoteRequest{}, &resp); err != nil || resp.Term != 7 {
		t.Fatalf("an engine behind a silent peer: %+v %v", resp, err)
	}
	// The server closes the silent connection once the bound has passed;
	// the deadline only keeps a broken test from hanging.
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the silent connection: %v, want closed by the server", err)
	}
}

// TestRaftTakesRenewedLeaves: after both ends renew their leaves, a new
// connection is made with the new ones, on either side.
func TestRaftTakesRenewedLeaves(t *testing.T) {
	ca := openMeshCA(t, meshca.Options{LeafTTL: 3 * time.Second})
	renewed := func() (meshtls.Options, chan struct{}) {
		ch := make(chan struct{}, 16)
		return meshtls.Options{OnRenew: func(time.Time) { ch <- struct{}{} }}, ch
	}
	serverOpts, serverRenewed := renewed()
	clientOpts, clientRenewed := renewed()
	serverID, clientID := meshIdentity(t, ca, "engine", serverOpts), meshIdentity(t, ca, "engine", clientOpts)
	<-serverRenewed // the first leaves
	<-clientRenewed
	stream, err := listenRaftTLS("127.0.0.1:0", nil, serverID, "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stream.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dialer := newRaftStream(ln, nil, nil, clientID.ClientTLS(sameService("engine")), handshakeTimeout, "test")
	t.Cleanup(func() { _ = ln.Close() })

	// connect returns the leaves each side saw of the other.
	connect := func() (serverSaw, clientSaw string) {
		t.Helper()
		accepted := make(chan string, 1)
		go func() {
			c, err := stream.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			defer c.Close()
			accepted <- c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
		}()
		c, err := dialer.Dial(raft.ServerAddress(stream.Addr().String()), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return <-accepted, c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	serial := func(id *meshtls.Identity) string { return id.Certificate().Leaf.SerialNumber.String() }

	firstServer, firstClient := serial(serverID), serial(clientID)
	if s, c := connect(); s != firstClient || c != firstServer {
		t.Fatalf("first leaves: the server saw %s (want %s), the client %s (want %s)", s, firstClient, c, firstServer)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go serverID.Run(ctx)
	go clientID.Run(ctx)
	<-serverRenewed
	<-clientRenewed
	s, c := connect()
	if s == firstClient || c == firstServer {
		t.Fatalf("after renewal a connection still used a first leaf: the server saw %s, the client %s", s, c)
	}
}

// TestRequireMTLS: LUCID_RAFT_REQUIRE_MTLS without the mesh is a
// configuration error, at Configure and, should it get that far, at start.
func TestRequireMTLS(t *testing.T) {
	r := envconfig.New(envconfig.Map(map[string]string{"LUCID_RAFT_REQUIRE_MTLS": "true"}))
	(&App{}).Configure(r)
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "LUCID_RAFT_REQUIRE_MTLS") {
		t.Errorf("Configure without the mesh: %v", err)
	}
	r = envconfig.New(envconfig.Map(map[string]string{"LUCID_RAFT_REQUIRE_MTLS": "true", service.EnvMeshURL: "https://mesh:8088"}))
	(&App{}).Configure(r)
	if err := r.Err(); err != nil {
		t.Errorf("Configure with the mesh: %v", err)
	}

	cfg := nodeConfig(t, "solo", true)
	cfg.RequireMTLS = true
	_, err := openNode(cfg, slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry()), nil)
	var ce *service.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("a start without an identity: %v, want a configuration error", err)
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8094": true, "[::1]:8094": true, "localhost:8094": true, "127.3.2.1:1": true,
		":8094": false, "0.0.0.0:8094": false, "[::]:8094": false, "192.168.1.12:8094": false, "pi2:8094": false, "nonsense": false,
	} {
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%q) = %v", addr, got)
		}
	}
}

// TestRaftPortSurvivesAFlood: silent connections cost Raft nothing until
// their handshake is done, and only so many may wait: one address's
// beyond maxPendingPerAddress are closed at once, while an engine dialling
// from another address is still served.
func TestRaftPortSurvivesAFlood(t *testing.T) {
	stream, clientTLS := floodedStream(t, "127.0.0.1:0")
	addr := stream.Addr().String()

	// waitPending waits until the server holds n handshakes from
	// 127.0.0.1.
	waitPending := func(n int) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, "the silent connections counted", func() bool {
			stream.mu.Lock()
			defer stream.mu.Unlock()
			return stream.pending["127.0.0.1"] == n
		})
	}
	var silent []net.Conn
	for range maxPendingPerAddress {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	defer func() {
		for _, c := range silent {
			_ = c.Close()
		}
	}()
	waitPending(maxPendingPerAddress)

	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second)) // only keeps a broken test from hanging
	if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection beyond the cap: %v, want closed at once", err)
	}

	// An engine from another address completes its handshake meanwhile.
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}, Config: clientTLS}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("an engine dialling during the flood: %v", err)
	}
	_ = c.Close()
	waitPending(maxPendingPerAddress) // the flood's handshakes still wait
}

// TestRaftPortKeepsRoomForTheServers: a LAN host with a few addresses
// holds every handshake slot with silent connections; an engine dialling
// from a server's address of the Raft configuration still gets through,
// while another address is refused.
func TestRaftPortKeepsRoomForTheServers(t *testing.T) {
	stream, clientTLS := floodedStream(t, "0.0.0.0:0")
	stream.trustPeers(func(host string) bool { return host == "127.0.0.100" })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(stream.Addr().(*net.TCPAddr).Port))
	var silent []net.Conn
	t.Cleanup(func() {
		for _, c := range silent {
			_ = c.Close()
		}
	})
	for a := byte(2); a < 2+maxPendingHandshakes/maxPendingPerAddress; a++ {
		for range maxPendingPerAddress {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, a)}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			silent = append(silent, c)
		}
	}
	testenv.Eventually(t, 10*time.Second, "every slot taken", func() bool {
		stream.mu.Lock()
		defer stream.mu.Unlock()
		return stream.total == maxPendingHandshakes
	})
	dial := func(last byte) error {
		d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, last)}}, Config: clientTLS}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	if err := dial(100); err != nil {
		t.Fatalf("a server's engine could not connect while %d silent connections wait: %v", len(silent), err)
	}
	if err := dial(101); err == nil {
		t.Error("an address that is no server's got past the full slots")
	}
}

// floodedStream is an engine's Raft stream listening on bind, for a
// flood: its handshakes may take an hour (so a connection closed was
// refused by a cap, not timed out), and what it accepts is closed. It
// returns the client TLS of an engine of the same mesh.
func floodedStream(t *testing.T, bind string) (*raftStream, *tls.Config) {
	t.Helper()
	ca := openMeshCA(t, meshca.Options{})
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, clientTLS := raftTLS(meshIdentity(t, ca, "engine", meshtls.Options{}))
	stream := newRaftStream(ln, nil, serverTLS, clientTLS, time.Hour, "test")
	t.Cleanup(func() { _ = stream.Close() })
	go func() {
		for {
			c, err := stream.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return stream, clientTLS
}
