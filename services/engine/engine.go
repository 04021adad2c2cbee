// Package engine is the blockchain engine (`lucid engine`, port 8084): the
// mempool, block production on wall-clock slots, Raft consensus and the
// authoritative chain store.
//
// Blocks are cut at every multiple of LUCID_BLOCK_INTERVAL since the Unix
// epoch, by the Raft leader only; empty blocks are cut too, as a heartbeat.
// A block is signed, recorded in the signing guard (fsynced), committed
// through Raft, and applied by every node to its chain store (fsynced) before
// it is announced on the follow stream. A one-voter cluster is bootstrapped
// on first start; voters are added and removed through the API.
package engine

import (
	"context"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
	servicecopy "github.com/pickme/lucid/pkg/snapshot"
)

// Config is the engine's own configuration.
type Config struct {
	DataDir       string
	ChainID       string        // LUCID_CHAIN_ID
	NodeID        string        // LUCID_NODE_ID
	BlockInterval time.Duration // LUCID_BLOCK_INTERVAL
	RaftAddr      string        // LUCID_RAFT_ADDR
	RaftAdvertise string        // LUCID_RAFT_ADVERTISE
	Bootstrap     bool          // LUCID_RAFT_BOOTSTRAP
	MempoolMax    int           // LUCID_MEMPOOL_MAX_TXS
	BlockMaxTxs   int           // LUCID_BLOCK_MAX_TXS
	MempoolBytes  int           // LUCID_MEMPOOL_MAX_BYTES
	FastElections bool          // LUCID_RAFT_FAST (tests)
	// RequireMTLS, LUCID_RAFT_REQUIRE_MTLS, refuses to start Raft over
	// plain TCP: a cluster that relies on the mesh does not fall back to
	// an unauthenticated transport when the mesh is missing from its env.
	RequireMTLS bool
	// Block streams users may hold open: LUCID_STREAMS_PER_USER each,
	// LUCID_STREAMS_MAX together (the stack's own followers are not
	// counted).
	StreamsPerUser, StreamsMax int
	RaftLog                    io.Writer
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// App is the engine service.
type App struct {
	cfg  Config
	node *node
	stop context.CancelFunc
}

var _ service.App = (*App)(nil)

// New returns the engine, ready to be configured.
func New() service.App { return &App{} }

// Configure reads the engine's settings.
func (a *App) Configure(r *envconfig.Reader) {
	host, _ := os.Hostname()
	host = strings.Map(func(c rune) rune {
		if c < 128 && (c == '-' || c == '.' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return c
		}
		return '-'
	}, host)
	if !nameRE.MatchString(host) {
		host = "node-1"
	}
	a.cfg = Config{
		ChainID:        r.String("LUCID_CHAIN_ID", "lucid"),
		NodeID:         r.String("LUCID_NODE_ID", host),
		BlockInterval:  r.Duration("LUCID_BLOCK_INTERVAL", 10*time.Second, time.Second, 10*time.Minute),
		RaftAddr:       r.ListenAddr("LUCID_RAFT_ADDR", "127.0.0.1:8094"),
		Bootstrap:      r.Bool("LUCID_RAFT_BOOTSTRAP", true),
		MempoolMax:     r.Int("LUCID_MEMPOOL_MAX_TXS", 200_000, 1, 10_000_000),
		BlockMaxTxs:    r.Int("LUCID_BLOCK_MAX_TXS", 20_000, 1, 100_000),
		MempoolBytes:   r.Int("LUCID_MEMPOOL_MAX_BYTES", 256<<20, 1<<20, 4<<30),
		FastElections:  r.Bool("LUCID_RAFT_FAST", false),
		RequireMTLS:    r.Bool("LUCID_RAFT_REQUIRE_MTLS", false),
		RaftLog:        os.Stderr,
		StreamsPerUser: r.Int("LUCID_STREAMS_PER_USER", 2, 1, 1000),
		StreamsMax:     r.Int("LUCID_STREAMS_MAX", 64, 1, 100_000),
	}
	a.cfg.RaftAdvertise = r.String("LUCID_RAFT_ADVERTISE", a.cfg.RaftAddr)
	if a.cfg.RequireMTLS && r.String(service.EnvMeshURL, "") == "" {
		r.Fail("LUCID_RAFT_REQUIRE_MTLS", "Raft over mTLS needs the mesh: set %s, or leave this unset for plain Raft on loopback", service.EnvMeshURL)
	}
	for key, v := range map[string]string{"LUCID_CHAIN_ID": a.cfg.ChainID, "LUCID_NODE_ID": a.cfg.NodeID} {
		if !nameRE.MatchString(v) {
			r.Fail(key, "%q must be 1-63 letters, digits, '.', '_' or '-'", v)
		}
	}
}

// Provision opens the chain, joins consensus and starts producing blocks.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	a.cfg.DataDir = srv.Config().DataDir
	m := newMetrics(srv.Registerer())
	n, err := openNode(a.cfg, srv.Logger(), m, srv.Identity())
	if err != nil {
		return err
	}
	a.node = n
	if _, err := servicecopy.Register(ctx, srv, a.takeSnapshot); err != nil {
		return err
	}
	pctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	stopped := make(chan struct{}) // closed once any hand-over is done
	a.stop = func() { stop(); <-stopped }
	go func() {
		select {
		case <-ctx.Done():
		case <-pctx.Done():
		}
		stop()
		// A leader that stops gives the leadership away first, as soon
		// as the stop begins: the others go on sealing at once instead
		// of after an election timeout (a deploy, docker stop, a
		// reboot). A crash still costs the election.
		n.handOverOnStop()
		close(stopped)
	}()
	go n.produce(pctx)
	m.mempool = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lucid_engine_mempool_txs", Help: "Transactions waiting for a block."},
		func() float64 { return float64(n.mempool.size()) })
	srv.Registerer().MustRegister(m.mempool)
	n.fence.register(srv.Registerer())
	srv.AddCheck("consensus", n.checkLeader)
	(&api{node: n, streams: service.NewSlots("block streams", a.cfg.StreamsMax, a.cfg.StreamsPerUser)}).routes(srv)
	return nil
}

// Close stops block production, hands the leadership over if it has it
// and another voter can take it, and closes consensus and the stores.
func (a *App) Close() error {
	if a.stop != nil {
		a.stop()
	}
	if a.node != nil {
		return a.node.close()
	}
	return nil
}

type metrics struct {
	blocks  prometheus.Counter
	txs     prometheus.Counter
	height  prometheus.Gauge
	slotLag prometheus.Histogram
	mempool prometheus.GaugeFunc
	// handovers counts the leaderships this engine gave away, by reason:
	// "stopping" or "fenced".
	handovers *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		blocks: prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_engine_blocks_total", Help: "Blocks applied to the chain store."}),
		txs:    prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_engine_transactions_total", Help: "Transactions sealed."}),
		height: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lucid_engine_height", Help: "Height of the newest block."}),
		slotLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lucid_engine_slot_lag_seconds", Help: "How late block production starts after its slot.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, 1},
		}),
		handovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lucid_engine_leadership_handovers_total",
			Help: "Leaderships this engine handed to another voter, by reason (stopping, fenced)."}, []string{"reason"}),
	}
	reg.MustRegister(m.blocks, m.txs, m.height, m.slotLag, m.handovers)
	return m
}
