package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/service"
)

// node is one engine: its chain store, its raft member, its mempool and,
// while it leads, its block producer.
type node struct {
	cfg     Config
	logger  *slog.Logger
	store   *chainstore.Store
	guard   *guard
	fence   *fence // the restore fence (fence.go)
	mempool *mempool
	signer  note.Signer
	vkey    string
	raft    *raft.Raft
	raftDB  *raftboltdb.BoltStore
	trans   *raft.NetworkTransport
	// stream is the mTLS stream layer under trans (nil over plain TCP).
	stream  *raftStream
	metrics *metrics
	origin  string
	// onSlot, if set, is told how late each block production started.
	onSlot func(lag time.Duration)
}

// openNode opens the engine's stores and joins Raft: over mTLS as id, or
// over plain TCP when id is nil (the mesh is off).
func openNode(cfg Config, logger *slog.Logger, m *metrics, id *meshtls.Identity) (n *node, err error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	n = &node{cfg: cfg, logger: logger, mempool: newMempool(cfg.MempoolMax, cfg.MempoolBytes), metrics: m, origin: chain.Origin(cfg.ChainID)}
	// Close what was opened when a later step fails; not through n, which
	// the failing return has set to nil.
	opened := n
	defer func() {
		if err != nil {
			_ = opened.close() // the failed step's error is the one to report
		}
	}()
	if n.signer, n.vkey, err = chain.LoadOrCreateKey(cfg.DataDir, cfg.NodeID); err != nil {
		return nil, err
	}
	if n.store, err = chainstore.Open(filepath.Join(cfg.DataDir, "chain.db"), n.origin); err != nil {
		return nil, err
	}
	if n.guard, err = openGuard(filepath.Join(cfg.DataDir, "guard.db")); err != nil {
		return nil, err
	}
	if n.fence, err = openFence(cfg.DataDir, n.guard); err != nil {
		return nil, err
	}
	if n.fence.active() {
		logger.Warn("fenced after a restore: serving reads and taking transactions, producing no block until the operator lifts the fence (lucidctl maintenance fence lift)",
			"height", n.store.Height(), "restored_height", n.fence.cur.RestoredHeight, "backup", n.fence.cur.Backup)
	}
	if err := n.startRaft(id); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *node) startRaft(id *meshtls.Identity) error {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	// The chain store is itself durable: on start, raft need not rebuild it
	// from a snapshot; replayed entries are recognised and skipped.
	rc.NoSnapshotRestoreOnStart = true
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Output: n.cfg.RaftLog, JSONFormat: true, Level: hclog.Warn})
	if n.cfg.FastElections {
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
	}

	var err error
	n.raftDB, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(n.cfg.DataDir, "raft.db")})
	if err != nil {
		return fmt.Errorf("raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, 2, rc.Logger)
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	if err := n.catchUpWithSnapshot(snaps); err != nil {
		return err
	}
	if n.trans, err = n.raftTransport(id, rc.Logger); err != nil {
		return err
	}
	existing, err := raft.HasExistingState(n.raftDB, n.raftDB, snaps)
	if err != nil {
		return err
	}
	if existing {
		if err := n.recoverAlone(rc, snaps); err != nil {
			return err
		}
	}
	n.raft, err = raft.NewRaft(rc, (*fsm)(n), n.raftDB, n.raftDB, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	if n.stream != nil {
		n.stream.trustPeers(n.isServerHost)
	}
	if !existing && n.cfg.Bootstrap {
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: n.trans.LocalAddr(), Suffrage: raft.Voter,
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap: %w", err)
		}
		n.logger.Info("bootstrapped a one-voter cluster", "node", n.cfg.NodeID, "raft", n.trans.LocalAddr())
	}
	return nil
}

// catchUpWithSnapshot stores the blocks of Raft's newest snapshot that
// the chain store lacks. A snapshot from the leader is written before it
// is applied: cut off in between (power, a full disk), the chain store
// lacks blocks Raft counts applied, and this node, leading, would sign
// another block at a height already committed. Only the missing blocks
// are decoded and stored, once, before Raft starts; a snapshot that
// cannot be read then stops the start, saying so.
func (n *node) catchUpWithSnapshot(snaps raft.SnapshotStore) error {
	height := n.store.Height()
	meta, top, behind := chainBehindSnapshot(n.cfg.DataDir, snaps, height, n.logger)
	if !behind {
		return nil
	}
	n.logger.Warn("the chain store is behind Raft's newest snapshot (its install was cut off); storing the snapshot's blocks before Raft starts",
		"height", height, "snapshot_height", top, "snapshot", meta.ID)
	_, rc, err := snaps.Open(meta.ID) // checks the snapshot's checksum
	if err != nil {
		return fmt.Errorf("raft snapshot %s, which holds blocks to height %d this chain store lacks: %w", meta.ID, top, err)
	}
	defer func() { _ = rc.Close() }() // only read
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 1<<20), 512<<20)
	for line := uint64(1); sc.Scan(); line++ {
		if line <= height {
			continue // the snapshot holds block h on line h: held already
		}
		b, err := chain.DecodeBlock(sc.Bytes())
		if err != nil {
			return fmt.Errorf("raft snapshot %s, line %d: %w", meta.ID, line, err)
		}
		if _, err := n.store.Append(b); err != nil {
			return fmt.Errorf("raft snapshot %s, block %d: %w", meta.ID, b.Height, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("raft snapshot %s: %w", meta.ID, err)
	}
	if h := n.store.Height(); h < top {
		return fmt.Errorf("raft snapshot %s ends at height %d, below the %d its last line says", meta.ID, h, top)
	}
	return nil
}

// chainBehindSnapshot reports whether Raft's newest snapshot in dir holds
// a block above height: its meta, its top height, and so. A snapshot is
// the chain's blocks, one per line (snapshot.Persist), so its last line
// says: read from the end of raft's file store's state file, not the
// whole of it. One whose end cannot be read is said in the log and
// counts as not behind, as before this check: Raft itself reads it, and
// says, when it is needed.
func chainBehindSnapshot(dir string, snaps raft.SnapshotStore, height uint64, logger *slog.Logger) (meta *raft.SnapshotMeta, top uint64, behind bool) {
	metas, err := snaps.List()
	if err != nil || len(metas) == 0 {
		return nil, 0, false
	}
	meta = metas[0]
	line, err := lastLine(filepath.Join(dir, "snapshots", meta.ID, "state.bin"))
	if err == nil && len(line) == 0 {
		return meta, 0, false // a snapshot of no blocks
	}
	var b *chain.Block
	if err == nil {
		b, err = chain.DecodeBlock(line)
	}
	if err != nil {
		logger.Warn("cannot tell whether the chain store is behind Raft's newest snapshot", "snapshot", meta.ID, "error", err)
		return meta, 0, false
	}
	return meta, b.Height, b.Height > height
}

// lastLine is a file's last line without its newline, read backwards in
// growing windows.
func lastLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }() // only read
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	for window := int64(64 << 10); ; window *= 2 {
		start := max(size-window, 0)
		buf := make([]byte, size-start)
		if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		buf = bytes.TrimSuffix(buf, []byte("\n"))
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			return buf[i+1:], nil
		}
		if start == 0 {
			return buf, nil
		}
	}
}

// recoverAlone rewrites the stored Raft configuration to this node alone
// when it names this node alone under an earlier id or address (recovery,
// below): a single Pi that becomes the first node of a cluster restarts
// with its cluster id and LAN address, and Raft, which never finds itself
// in the stored configuration, would never elect. It uses raft's manual
// recovery, raft.RecoverCluster, which keeps the log's blocks (replayed
// into the chain store, which already holds them) and the validator key.
func (n *node) recoverAlone(rc *raft.Config, snaps raft.SnapshotStore) error {
	// Read and rewritten through an in-memory transport: the unstarted
	// Raft that reads the configuration would otherwise take the real
	// transport's heartbeats, and nothing here needs the network.
	_, probe := raft.NewInmemTransport(n.trans.LocalAddr())
	defer func() { _ = probe.Close() }()
	conf := *rc // GetConfiguration marks the config it is given as not to start
	stored, err := raft.GetConfiguration(&conf, (*fsm)(n), n.raftDB, n.raftDB, snaps, probe)
	if err != nil {
		return fmt.Errorf("raft: read the stored configuration: %w", err)
	}
	self := raft.Server{ID: rc.LocalID, Address: n.trans.LocalAddr(), Suffrage: raft.Voter}
	d := recovery(stored, self, n.signer.Name(), n.cfg.Bootstrap)
	if d.Refusal != "" {
		n.logger.Warn("raft: the stored configuration does not name this node; not rewriting it", "reason", d.Refusal,
			"servers", fmt.Sprint(stored.Servers), "node", self.ID, "raft", self.Address)
	}
	if !d.Recover {
		return nil
	}
	conf = *rc
	if err := raft.RecoverCluster(&conf, (*fsm)(n), n.raftDB, n.raftDB, snaps, probe, raft.Configuration{Servers: []raft.Server{self}}); err != nil {
		return fmt.Errorf("raft: recover the configuration to this node alone: %w", err)
	}
	n.logger.Warn("raft: the one-voter configuration named this node under an earlier id or address; recovered it to this node alone",
		"was_id", d.Was.ID, "was_address", d.Was.Address, "id", self.ID, "address", self.Address, "height", n.store.Height(), "validator_key", n.vkey)
	return nil
}

// recoveryDecision says whether a stored configuration is rewritten to
// this node alone, and why not when it names someone else.
type recoveryDecision struct {
	Recover bool
	// Was is the one server the stored configuration named.
	Was raft.Server
	// Refusal, when set, says why a one-server configuration that is not
	// this node as it is now is left alone.
	Refusal string
}

// recovery decides on the stored configuration of a node that is self now,
// whose validator key was made under keyName (its id when it first
// started). Only a configuration of one voter that is this node, by its
// current id or the key's name, at another id or address, is rewritten:
// never one of several servers, where this node alone would split from
// the others, and never another node's (this one was removed from a
// cluster, or its data came from elsewhere), where it would fork the
// chain. Only a node that may bootstrap a cluster alone (bootstrap) may
// also be recovered to one alone; a joining node waits for the leader.
func recovery(stored raft.Configuration, self raft.Server, keyName string, bootstrap bool) recoveryDecision {
	if len(stored.Servers) != 1 {
		return recoveryDecision{}
	}
	was := stored.Servers[0]
	d := recoveryDecision{Was: was}
	switch {
	case was.ID == self.ID && was.Address == self.Address:
		return d
	case was.Suffrage != raft.Voter:
		d.Refusal = "its one server is not a voter"
	case was.ID != self.ID && string(was.ID) != keyName:
		d.Refusal = fmt.Sprintf("its one server, %s, is neither this node's id nor the name of its validator key (%s)", was.ID, keyName)
	case !bootstrap:
		d.Refusal = "LUCID_RAFT_BOOTSTRAP is false: a joining node does not stand alone"
	default:
		d.Recover = true
	}
	return d
}

// raftTransport listens for the other nodes: over mTLS with the mesh
// identity when there is one, else over plain TCP, as a one-Pi chain on
// loopback needs.
func (n *node) raftTransport(id *meshtls.Identity, logger hclog.Logger) (*raft.NetworkTransport, error) {
	advertise, err := net.ResolveTCPAddr("tcp", n.cfg.RaftAdvertise)
	if err != nil {
		return nil, fmt.Errorf("LUCID_RAFT_ADVERTISE %q: %w", n.cfg.RaftAdvertise, err)
	}
	if id == nil {
		if n.cfg.RequireMTLS {
			return nil, &service.ConfigError{Service: "engine", Err: errors.New("LUCID_RAFT_REQUIRE_MTLS: Raft over mTLS needs a mesh identity, and the mesh is off (LUCID_MESH_URL)")}
		}
		trans, err := raft.NewTCPTransportWithLogger(n.cfg.RaftAddr, advertise, 3, raftTimeout, logger)
		if err != nil {
			return nil, fmt.Errorf("raft transport on %s: %w", n.cfg.RaftAddr, err)
		}
		if loopback(n.cfg.RaftAddr) {
			n.logger.Info("raft transport: plain TCP on loopback", "addr", n.cfg.RaftAddr)
		} else {
			n.logger.Warn("raft transport: plain TCP on an address other hosts reach, without the mesh: anyone who reaches it can take part in consensus; switch the mesh on (LUCID_MESH_URL) or keep LUCID_RAFT_ADDR on loopback",
				"addr", n.cfg.RaftAddr)
		}
		return trans, nil
	}
	// As raft's TCP transport does: the others must be able to dial it.
	if advertise.IP == nil || advertise.IP.IsUnspecified() {
		return nil, fmt.Errorf("LUCID_RAFT_ADVERTISE %q: not an address other nodes can reach", n.cfg.RaftAdvertise)
	}
	stream, err := listenRaftTLS(n.cfg.RaftAddr, advertise, id, n.cfg.ChainID)
	if err != nil {
		return nil, fmt.Errorf("raft transport on %s: %w", n.cfg.RaftAddr, err)
	}
	n.stream = stream // told the cluster's servers once Raft runs
	n.logger.Info("raft transport: mTLS with the mesh identity", "addr", n.cfg.RaftAddr, "peers", meshca.SPIFFEID(id.Service()).String())
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: raftTimeout, Logger: logger,
	}), nil
}

// isServerHost reports whether host is the address of a server of the
// Raft configuration.
func (n *node) isServerHost(host string) bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if h, _, err := net.SplitHostPort(string(srv.Address)); err == nil && h == host {
			return true
		}
	}
	return false
}

// loopback reports whether a listen address (host:port) takes connections
// from this host only. An empty host, or a name other than localhost, may
// be reachable from elsewhere.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (n *node) close() error {
	var errs []error
	if n.raft != nil {
		errs = append(errs, n.raft.Shutdown().Error())
	}
	if n.trans != nil {
		errs = append(errs, n.trans.Close())
	}
	if n.raftDB != nil {
		errs = append(errs, n.raftDB.Close())
	}
	if n.guard != nil {
		errs = append(errs, n.guard.close())
	}
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}

func (n *node) isLeader() bool { return n.raft.State() == raft.Leader }

// nextSlot returns the first slot boundary (a multiple of interval since
// the Unix epoch) strictly after t.
func nextSlot(t time.Time, interval time.Duration) time.Time {
	return t.Truncate(interval).Add(interval)
}

// produce cuts a block at every slot while this node leads.
func (n *node) produce(ctx context.Context) {
	for {
		slot := nextSlot(time.Now(), n.cfg.BlockInterval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(slot)):
		}
		if !n.isLeader() {
			continue
		}
		lag := time.Since(slot)
		n.metrics.slotLag.Observe(lag.Seconds())
		if n.onSlot != nil {
			n.onSlot(lag)
		}
		if err := n.propose(slot); errors.Is(err, errFenced) {
			n.fence.skipped.Inc()
			n.handOverWhileFenced()
		} else if err != nil {
			n.logger.Warn("block not produced", "slot", slot, "error", err)
		}
	}
}

// handOverWhileFenced gives the leadership to another voter when this
// engine leads while fenced: it produces no block until the operator
// lifts its fence, and as a leader it would stop the whole cluster's
// chain meanwhile. A leader alone keeps it (there is no one to hand over
// to, and a restored single Pi waits for the operator as before).
func (n *node) handOverWhileFenced() {
	if !n.canHandOver() {
		return
	}
	n.logger.Warn("fenced after a restore while leading: handing the leadership over, so that the cluster's chain goes on")
	n.transfer(handOverFenced)
}

// The reasons an engine hands its leadership over, as its metric says them.
const (
	handOverStopping = "stopping"
	handOverFenced   = "fenced"
)

// canHandOver reports whether this engine leads and another voter could
// take the leadership from it.
func (n *node) canHandOver() bool {
	if n.raft.State() != raft.Leader {
		return false
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	voters := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	return voters >= 2
}

// handOverOnStop gives the leadership to the most up-to-date other voter,
// when canHandOver, as the engine stops. A voter that is not leading says
// so: one that had just lost the leadership (a leader cut off from its
// quorum steps down) has nothing to hand over, and its log shows why.
func (n *node) handOverOnStop() {
	if n.canHandOver() {
		n.transfer(handOverStopping)
		return
	}
	if st := n.raft.State(); st != raft.Leader {
		n.logger.Info("stopping while not leading: no leadership to hand over", "raft_state", st.String())
	}
}

// transfer gives the leadership to the most up-to-date other voter, and
// counts it. Raft bounds the wait by its election timeout.
func (n *node) transfer(reason string) {
	n.logger.Info("handing the leadership over to another voter", "reason", reason)
	start := time.Now()
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		// A leader starved of CPU hears of the next term after Raft's wait
		// for it has ended: the leadership moved all the same. Raft says
		// that timeout in words alone. It is not counted as a hand-over:
		// the leader may have lost its quorum instead.
		if err.Error() == transferTimeout && n.stepsDown(n.raft.ReloadableConfig().ElectionTimeout) {
			n.logger.Info("leadership moved on, though Raft's wait for the hand-over ended first", "reason", reason, "error", err)
			return
		}
		n.logger.Warn("leadership not handed over", "reason", reason, "error", err)
		return
	}
	n.metrics.handovers.WithLabelValues(reason).Inc()
	_, to := n.raft.LeaderWithID()
	n.logger.Info("leadership handed over", "reason", reason, "to", string(to), "took", time.Since(start).Round(time.Millisecond).String())
}

// transferTimeout is hashicorp/raft's error when the leader did not step
// down within an election timeout of handing its leadership over.
const transferTimeout = "leadership transfer timeout"

// stepsDown waits up to d for this engine to stop leading, and reports
// whether it did.
func (n *node) stepsDown(d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n.raft.State() == raft.Leader {
		select {
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}

// propose seals the mempool into the block for slot and commits it through
// raft. The signed block is recorded in the guard before it leaves the node.
func (n *node) propose(slot time.Time) error {
	if n.fence.active() {
		return errFenced
	}
	// Apply everything the cluster has committed before building on it.
	if err := n.raft.Barrier(n.cfg.BlockInterval).Error(); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	head := n.store.Head()
	height, prev := uint64(1), chain.ZeroHash
	if head != nil {
		if !slot.After(head.Time) {
			return nil // this slot is taken (a clock step back, or a re-elected leader)
		}
		height, prev = head.Height+1, head.Hash()
	}
	b, err := n.guard.signed(height)
	if err != nil {
		return err
	}
	if b != nil {
		h, err := b.Header()
		if err != nil {
			return err
		}
		if h.Prev != prev {
			// Cannot happen with Raft's committed history; refuse to sign
			// a second block at this height all the same.
			return fmt.Errorf("this node signed a block at height %d on another parent (%s, head is %s); not signing another", height, h.Prev, prev)
		}
		n.logger.Info("re-proposing the block this node already signed", "height", height)
	} else {
		if b, err = n.build(slot, height, prev); err != nil {
			return err
		}
		// Never sign away a block the chain would refuse: the guard would
		// make this node re-propose it forever.
		if _, err := n.store.Verify(b); err != nil {
			return fmt.Errorf("built an invalid block: %w", err)
		}
		if b, err = n.guard.record(b); err != nil {
			return fmt.Errorf("record signed block: %w", err)
		}
	}
	enc, err := b.Encode()
	if err != nil {
		return err
	}
	f := n.raft.Apply(enc, 2*n.cfg.BlockInterval)
	if err := f.Error(); err != nil {
		return fmt.Errorf("commit block %d: %w", height, err)
	}
	if resp, ok := f.Response().(error); ok && resp != nil {
		return fmt.Errorf("apply block %d: %w", height, resp)
	}
	if height > 100 {
		_ = n.guard.forget(height - 100)
	}
	return nil
}

// maxBlockBytes bounds the transactions of one block, so a block stays a
// reasonable Raft entry and stream line whatever the transaction count.
const maxBlockBytes = 32 << 20

// build makes and signs the block at height from the mempool.
func (n *node) build(slot time.Time, height uint64, prev string) (*chain.Block, error) {
	_, txs := n.mempool.next(n.cfg.BlockMaxTxs)
	raws := make([]json.RawMessage, 0, len(txs)+1)
	if height == 1 {
		genesis, err := (&chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{
			Action: chain.ActionAddValidator, Key: n.vkey, Node: n.cfg.NodeID,
		}}).Encode()
		if err != nil {
			return nil, err
		}
		raws = append(raws, genesis)
	}
	var stale []string
	blockBytes := 0
	for _, tx := range txs {
		if blockBytes += len(tx); blockBytes > maxBlockBytes {
			break // the rest waits for the next block
		}
		// A transaction sealed while it waited (resubmitted by a client
		// after a leader change) must not enter the log twice.
		if id := chain.TxID(tx); n.store.HasTx(id) {
			stale = append(stale, id)
			continue
		}
		raws = append(raws, tx)
	}
	n.mempool.remove(stale)
	blk := &chain.Block{Height: height, Transactions: raws}
	size, root, err := n.store.NextRoot(blk.LeafHashes())
	if err != nil {
		return nil, err
	}
	h := &chain.Header{
		Origin: n.origin, TreeSize: size, Root: root, Height: height, Prev: prev,
		Time: slot.UTC(), TxCount: len(raws), Proposer: n.signer.Name(),
	}
	signed, err := chain.SignHeader(h, n.signer)
	if err != nil {
		return nil, err
	}
	blk.Hash, blk.Checkpoint = h.Hash(), string(signed)
	return blk, nil
}

// fsm applies committed blocks to the chain store.
type fsm node

var _ raft.FSM = (*fsm)(nil)

func (f *fsm) Apply(l *raft.Log) any {
	b, err := chain.DecodeBlock(l.Data)
	if err != nil {
		return fmt.Errorf("raft entry %d is not a block: %w", l.Index, err)
	}
	start := time.Now()
	h, err := f.store.Append(b)
	var refused *chain.BlockError
	if errors.As(err, &refused) {
		// Every node refuses the same invalid block the same way, so the
		// replicas stay equal.
		f.logger.Error("block refused", "height", b.Height, "error", err)
		return err
	}
	if err != nil {
		// A storage failure would leave this node without a block its
		// peers have; stopping (and replaying the log on restart) is the
		// only way not to diverge.
		f.logger.Error("cannot store a committed block; stopping", "height", b.Height, "error", err)
		panic(fmt.Sprintf("apply block %d: %v", b.Height, err))
	}
	ids := make([]string, len(b.Transactions))
	for i, raw := range b.Transactions {
		ids[i] = chain.TxID(raw)
	}
	f.mempool.remove(ids)
	f.metrics.blocks.Inc()
	f.metrics.txs.Add(float64(len(ids)))
	f.metrics.height.Set(float64(h.Height))
	f.logger.Info("block sealed", "height", h.Height, "txs", h.TxCount, "tree_size", h.TreeSize,
		"hash", h.Hash(), "proposer", h.Proposer, "apply_ms", time.Since(start).Milliseconds())
	return nil
}

// Snapshot streams every block; a follower that is too far behind for the
// log gets them through Restore.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{store: f.store, height: f.store.Height()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 1<<20), 512<<20)
	for sc.Scan() {
		b, err := chain.DecodeBlock(sc.Bytes())
		if err != nil {
			return err
		}
		if _, err := f.store.Append(b); err != nil {
			return fmt.Errorf("restore block %d: %w", b.Height, err)
		}
	}
	return sc.Err()
}

type snapshot struct {
	store  *chainstore.Store
	height uint64
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	err := s.store.Blocks(1, s.height, func(raw []byte) error {
		if _, err := sink.Write(raw); err != nil {
			return err
		}
		_, err := sink.Write([]byte("\n"))
		return err
	})
	if err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
