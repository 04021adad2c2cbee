// Package blocks is the block manager (`lucid blocks`, port 8086). It
// follows the engine's block stream and re-verifies every block on its own
// (the validator's signature, the hash link, the height and time, every
// transaction, and the Merkle root recomputed from the transactions, which
// also proves the checkpoint consistent with the previous one) before it
// indexes it. A block that fails is refused and reported, never indexed. It
// serves blocks, transactions, anchors by session, inclusion proofs, and a
// full audit of the chain it holds.
package blocks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/snapshot"
)

// App is the block manager.
type App struct {
	engineURL  string
	chainID    string
	validators []string // LUCID_VALIDATOR_KEYS: pinned genesis validators

	store  *chainstore.Store
	engine *engineapi.Client
	logger *slog.Logger

	mu       sync.Mutex
	rejected *Rejection
	engineH  uint64
	lastErr  string

	indexed   prometheus.Counter
	refusals  prometheus.Counter
	auditsMax int
	audits    *service.Slots
}

// Rejection records a block that failed verification.
type Rejection struct {
	Height uint64    `json:"height"`
	Hash   string    `json:"hash"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

var _ service.App = (*App)(nil)

// New returns the block manager, ready to be configured.
func New() service.App { return &App{} }

// Configure reads the engine's URL, the chain id and optional pinned
// validator keys.
func (a *App) Configure(r *envconfig.Reader) {
	// One engine, or every node of a cluster (comma-separated): the client
	// moves on from a node that is down or not the leader.
	a.engineURL = r.URLList("BLOCKCHAIN_ENGINE_URL", "http://127.0.0.1:8084")
	a.chainID = r.String("LUCID_CHAIN_ID", "lucid")
	a.auditsMax = r.Int("LUCID_AUDITS_MAX", 2, 1, 64)
	if v := r.String("LUCID_VALIDATOR_KEYS", ""); v != "" {
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			if _, err := chain.ParseVerifier(k); err != nil {
				r.Fail("LUCID_VALIDATOR_KEYS", "%v", err)
			}
			a.validators = append(a.validators, k)
		}
	}
}

// Provision opens the index and starts following the engine.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	var err error
	a.store, err = chainstore.Open(filepath.Join(srv.Config().DataDir, "index.db"), chain.Origin(a.chainID))
	if err != nil {
		return err
	}
	a.engine = engineapi.New(a.engineURL, srv.Client("engine", 30*time.Second))
	a.logger = srv.Logger()
	a.audits = service.NewSlots("chain audits", a.auditsMax, 1)
	a.indexed = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_blocks_indexed_total", Help: "Blocks verified and indexed."})
	a.refusals = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_blocks_refused_total", Help: "Blocks that failed verification."})
	height := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lucid_blocks_height", Help: "Height of the newest verified block."},
		func() float64 { return float64(a.store.Height()) })
	srv.Registerer().MustRegister(a.indexed, a.refusals, height)
	srv.AddCheck("engine", func(ctx context.Context) error {
		_, err := a.engine.Chain(ctx)
		return err
	})
	srv.AddCheck("chain", func(context.Context) error {
		if r := a.rejection(); r != nil {
			return errors.New("refused block " + r.Hash + ": " + r.Reason)
		}
		return nil
	})
	if _, err := snapshot.Register(ctx, srv, a.takeSnapshot); err != nil {
		return err
	}
	go a.follow(ctx)
	(&api{app: a}).routes(srv)
	return nil
}

// Close closes the index.
func (a *App) Close() error {
	if a.store != nil {
		return a.store.Close()
	}
	return nil
}

func (a *App) rejection() *Rejection {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rejected
}

// follow indexes the engine's blocks, reconnecting when the engine
// restarts. After a refusal it keeps trying from the same height: if the
// engine serves a valid block there later, indexing goes on.
func (a *App) follow(ctx context.Context) {
	backoff := service.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		from := a.store.Height() + 1
		err := a.checkConsistency(ctx)
		if err == nil {
			err = a.engine.Follow(ctx, from, func(b *chain.Block) error {
				backoff.Reset()
				return a.index(b)
			})
		}
		if ctx.Err() != nil {
			return
		}
		var be *chain.BlockError
		// lastErr is on the users' status endpoint: a refused block says
		// why, anything else (internal names and addresses) only the log.
		lastErr := "following the engine failed; the block manager's log says why"
		switch {
		case errors.As(err, &be):
			backoff.AtLeast(5 * time.Second) // a refused block will not fix itself at once
			lastErr = be.Error()
		case errors.Is(err, errStoring):
			backoff.AtLeast(5 * time.Second) // nor a full disk
		}
		a.mu.Lock()
		a.lastErr = lastErr
		a.mu.Unlock()
		a.logger.Warn("following the engine stopped; resuming", "from", from, "error", err, "backoff", backoff.Delay())
		if !backoff.Wait(ctx) {
			return
		}
	}
}

// checkConsistency asks the engine to prove that its current log extends
// the one verified here, before following it again: an engine whose history
// was rewritten (restored from an old disk, or forked) is refused.
func (a *App) checkConsistency(ctx context.Context) error {
	ours := a.store.Head()
	if ours == nil {
		return nil
	}
	info, err := a.engine.Chain(ctx)
	if err != nil || info.Height <= ours.Height {
		return err // nothing newer to compare with
	}
	b, err := a.engine.Block(ctx, info.Height)
	if err != nil {
		return err
	}
	theirs, err := b.Header()
	if err != nil {
		return err
	}
	p, err := a.engine.Consistency(ctx, ours.TreeSize, theirs.TreeSize)
	if err != nil {
		return err
	}
	if err := chain.CheckConsistency(ours, theirs, p); err != nil {
		return a.refuse(b, fmt.Errorf("the engine's chain does not extend the verified one: %w", err))
	}
	return nil
}

// errStoring is the index's own failure to store a block.
var errStoring = errors.New("store block")

// index verifies b independently and stores it, or refuses it.
func (a *App) index(b *chain.Block) error {
	if a.store.Height() == 0 && len(a.validators) > 0 {
		// Pinned validators: the first block must be signed by one of them.
		vs, err := chain.Verifiers(a.validators)
		if err != nil {
			return err
		}
		if _, err := chain.OpenHeader([]byte(b.Checkpoint), vs); err != nil {
			return a.refuse(b, err)
		}
	}
	h, err := a.store.Append(b)
	var be *chain.BlockError
	switch {
	case errors.As(err, &be):
		return a.refuse(b, err)
	case err != nil:
		// The store's own failure (a full disk, an I/O error) says nothing
		// against the block: not a refusal on /ready or the users' status,
		// but an error the loop logs and retries.
		return fmt.Errorf("%w %d: %w", errStoring, b.Height, err)
	}
	a.indexed.Inc()
	a.mu.Lock()
	a.rejected, a.lastErr = nil, ""
	a.engineH = max(a.engineH, h.Height)
	a.mu.Unlock()
	return nil
}

func (a *App) refuse(b *chain.Block, err error) error {
	a.refusals.Inc()
	a.mu.Lock()
	a.rejected = &Rejection{Height: b.Height, Hash: b.Hash, Reason: err.Error(), At: time.Now().UTC()}
	a.mu.Unlock()
	a.logger.Error("block refused", "height", b.Height, "hash", b.Hash, "reason", err)
	var be *chain.BlockError
	if errors.As(err, &be) {
		return err
	}
	return &chain.BlockError{Height: b.Height, Reason: err.Error()}
}
