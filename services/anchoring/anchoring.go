// Package anchoring is session anchoring (`lucid anchoring`, port 8085): it
// accepts session manifests for the principal the gateway names, queues
// each as an anchor transaction on disk before it answers 202, submits the
// queue to the engine until every anchor is sealed or refused
// (idempotently: a transaction's id is its content), and serves each
// anchor's status to its owner: once sealed with its offline-verifiable
// receipt, once refused with the reason.
package anchoring

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
	"golang.org/x/sync/singleflight"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/snapshot"
)

// App is the session anchoring service.
type App struct {
	engineURL     string
	batch         int
	resubmitAfter time.Duration

	store  *store
	engine *engineapi.Client
	logger *slog.Logger
	kick   chan struct{} // new anchors: submit now

	mu        sync.Mutex
	submitted map[string]time.Time // tx id → last submission
	forgot    time.Time            // when forgetSubmitted last went through submitted
	head      uint64               // the engine's height, as last seen
	chainID   string
	vkeys     []string
	// keysAt is when vkeys were read, by now (default time.Now);
	// keysRead makes one read serve every request that wants them then.
	keysAt   time.Time
	keysRead singleflight.Group
	now      func() time.Time
	// perDay bounds each user's new anchors a day, by tier
	// (LUCID_ANCHORS_PER_DAY_<TIER>; 0: no bound): every anchor is kept
	// on the chain for good, on every Pi.
	perDay    auth.PerTier[uint64]
	overDaily *prometheus.CounterVec
	accepted  prometheus.Counter
	sealed    prometheus.Counter
	refused   prometheus.Counter
}

var _ service.App = (*App)(nil)

// New returns the anchoring service, ready to be configured.
func New() service.App { return &App{} }

// Configure reads the engine's URL and the queue's tuning.
func (a *App) Configure(r *envconfig.Reader) {
	// One engine, or every node of a cluster (comma-separated): the client
	// moves on from a node that is down or not the leader.
	a.engineURL = r.URLList("BLOCKCHAIN_ENGINE_URL", "http://127.0.0.1:8084")
	a.batch = r.Int("LUCID_ANCHOR_BATCH", 1000, 1, 1000)
	a.resubmitAfter = r.Duration("LUCID_ANCHOR_RESUBMIT", 15*time.Second, time.Second, time.Hour)
	a.perDay = auth.PerTier[uint64]{}
	for _, t := range auth.Tiers {
		a.perDay[t] = uint64(r.Int("LUCID_ANCHORS_PER_DAY_"+strings.ToUpper(string(t)), defaultPerDay.Of(t), 0, 100_000_000))
	}
}

// defaultPerDay are the new anchors a user may submit a day, by tier:
// far more sessions than a person records, far fewer than a script
// could fill the chain with (a free token's rate limit alone lets 144,000
// a day through).
var defaultPerDay = auth.PerTier[int]{auth.TierFree: 1_000, auth.TierPremium: 20_000, auth.TierEnterprise: 0}

// Provision opens the queue and starts the submitter and the follower.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	var err error
	if a.store, err = openStore(filepath.Join(srv.Config().DataDir, "anchors.db")); err != nil {
		return err
	}
	a.engine = engineapi.New(a.engineURL, srv.Client("engine", 30*time.Second))
	a.logger = srv.Logger()
	a.kick = make(chan struct{}, 1)
	a.submitted = map[string]time.Time{}
	a.overDaily = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lucid_anchoring_daily_limit_refusals_total", Help: "New anchors refused because their owner had submitted as many as its tier allows a day."}, []string{"tier"})
	a.accepted = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_anchoring_accepted_total", Help: "Anchors accepted (durably queued)."})
	a.sealed = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_anchoring_sealed_total", Help: "Anchors seen sealed in a block."})
	a.refused = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_anchoring_refused_total", Help: "Anchors the engine refused for good (their status says why)."})
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lucid_anchoring_pending", Help: "Anchors waiting to be sealed."},
		func() float64 { return float64(a.store.pendingCount()) })
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lucid_anchoring_oldest_pending_timestamp_seconds", Help: "When the oldest anchor waiting to be sealed was accepted (Unix seconds); 0 when none waits."},
		func() float64 {
			t := a.store.oldestPending()
			if t.IsZero() {
				return 0
			}
			return float64(t.UnixNano()) / 1e9
		})
	srv.Registerer().MustRegister(a.accepted, a.sealed, a.refused, a.overDaily, pending, oldest)
	srv.AddCheck("engine", func(ctx context.Context) error {
		_, err := a.engine.Chain(ctx)
		return err
	})
	if _, err := snapshot.Register(ctx, srv, a.takeSnapshot); err != nil {
		return err
	}
	go a.submitLoop(ctx)
	go a.followLoop(ctx)
	(&api{app: a}).routes(srv)
	return nil
}

// Close closes the queue.
func (a *App) Close() error {
	if a.store != nil {
		return a.store.close()
	}
	return nil
}

func (a *App) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// submitLoop sends pending anchors to the engine, oldest first: new ones
// at once, unsealed ones again after resubmitAfter (the engine drops
// duplicates).
func (a *App) submitLoop(ctx context.Context) {
	backoff := service.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	// While the engine defers anchors, the next pass waits this long:
	// every new anchor's kick would only have it turn the same ones away.
	full := service.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-tick.C:
		}
		deferred, ok := a.submitPass(ctx, &backoff)
		switch {
		case !ok:
			return
		case !deferred:
			full.Reset()
		case !full.Wait(ctx):
			return
		}
	}
}

// submitPass goes through the queue once, in batches, oldest first,
// retrying a batch that fails after backoff. It stops after a batch the
// engine deferred anchors of (its mempool full): the next pass starts
// from the oldest again, so the anchors accepted first take the room
// that frees first. It reports whether it stopped so; ok is false when
// ctx ended.
func (a *App) submitPass(ctx context.Context, backoff *service.Backoff) (deferred, ok bool) {
	a.forgetSubmitted(time.Now())
	var after uint64
	for ctx.Err() == nil {
		n, last, held, err := a.submitOnce(ctx, after)
		if err != nil {
			a.logger.Warn("submit to the engine failed; retrying", "error", err, "backoff", backoff.Delay())
			if !backoff.Wait(ctx) {
				return false, false
			}
			continue
		}
		backoff.Reset()
		if held || n < a.batch {
			return held, true
		}
		after = last
	}
	return false, false
}

// forgetSubmitted drops the submissions older than resubmitAfter, which
// no longer hold an anchor back: one sealed while its batch was on the
// way is never deleted otherwise. It goes through them at most once a
// second, as new anchors start a pass each.
func (a *App) forgetSubmitted(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if now.Sub(a.forgot) < time.Second {
		return
	}
	a.forgot = now
	for id, t := range a.submitted {
		if now.Sub(t) >= a.resubmitAfter {
			delete(a.submitted, id)
		}
	}
}

// submitOnce sends the engine the next batch of pending anchors after
// the queue's place after, and returns how many it sent, the place it
// got to, and whether the engine deferred any.
func (a *App) submitOnce(ctx context.Context, after uint64) (sent int, last uint64, deferred bool, err error) {
	now := time.Now()
	skip := func(id string) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		t, ok := a.submitted[id]
		return ok && now.Sub(t) < a.resubmitAfter
	}
	// The queue is read without holding a.mu, so status requests and the
	// follower are not held up by a long pending list.
	ids, txs, last, err := a.store.pending(a.batch, after, skip)
	if err != nil || len(ids) == 0 {
		return 0, last, false, err
	}
	res, err := a.engine.Submit(ctx, txs)
	if err != nil {
		return 0, after, false, err
	}
	if len(res.Transactions) != len(ids) {
		return 0, after, false, fmt.Errorf("the engine answered %d items for %d transactions", len(res.Transactions), len(ids))
	}
	// The engine answers item by item. A transaction it already sealed
	// (sent there by another route, or sealed in a block this follower
	// passed before a restore) is marked here, or it would stay pending
	// for ever; one it refused leaves the queue with its reason, so it
	// never holds back the others.
	var sealed []sealedTx
	var refused []refusal
	var later []string // deferred: not skipped as sent, so the next pass offers them first
	for i, st := range res.Transactions {
		switch st.Status {
		case engineapi.StatusSealed:
			if st.Index != nil {
				sealed = append(sealed, sealedTx{id: ids[i], height: st.Height, index: *st.Index})
			}
		case engineapi.StatusRefused:
			refused = append(refused, refusal{id: ids[i], code: st.Code, reason: st.Reason})
			a.logger.Warn("the engine refused an anchor", "tx", ids[i], "code", st.Code, "reason", st.Reason)
		case engineapi.StatusDeferred:
			later = append(later, ids[i])
		}
	}
	if len(sealed) > 0 {
		n, err := a.store.markSealedOnly(sealed)
		if err != nil {
			return 0, after, false, err
		}
		a.sealed.Add(float64(n))
	}
	if len(refused) > 0 {
		n, err := a.store.markRefused(refused)
		if err != nil {
			return 0, after, false, err
		}
		a.refused.Add(float64(n))
	}
	a.mu.Lock()
	for _, id := range ids {
		a.submitted[id] = now
	}
	for _, st := range sealed {
		delete(a.submitted, st.id)
	}
	for _, r := range refused {
		delete(a.submitted, r.id)
	}
	for _, id := range later {
		delete(a.submitted, id)
	}
	a.mu.Unlock()
	return len(ids), last, len(later) > 0, nil
}

// followLoop follows the engine's blocks from the last one seen and marks
// the anchors they seal, reconnecting whenever the stream breaks.
func (a *App) followLoop(ctx context.Context) {
	backoff := service.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		from := a.store.followed() + 1
		err := a.engine.Follow(ctx, from, func(b *chain.Block) error {
			backoff.Reset()
			return a.onBlock(b)
		})
		if ctx.Err() != nil {
			return
		}
		a.logger.Warn("following the engine failed; reconnecting", "from", from, "error", err, "backoff", backoff.Delay())
		if !backoff.Wait(ctx) {
			return
		}
	}
}

// onBlock records which of our anchors b sealed. The engine verified the
// block; the receipt we hand out is verifiable by anyone anyway.
func (a *App) onBlock(b *chain.Block) error {
	h, err := b.Header()
	if err != nil {
		return err
	}
	first := h.TreeSize - uint64(len(b.Transactions))
	txs := make([]sealedTx, len(b.Transactions))
	for i, raw := range b.Transactions {
		txs[i] = sealedTx{id: chain.TxID(raw), height: b.Height, index: first + uint64(i)}
	}
	n, err := a.store.markSealed(b.Height, txs)
	if err != nil {
		return err
	}
	a.sealed.Add(float64(n))
	a.mu.Lock()
	a.head = b.Height
	for _, t := range txs {
		delete(a.submitted, t.id)
	}
	a.mu.Unlock()
	return nil
}

// keysUnavailableError means the engine could not be asked for the
// validator keys.
type keysUnavailableError struct{ err error }

func (e *keysUnavailableError) Error() string { return "validator keys unavailable: " + e.err.Error() }

func (a *App) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

// keysRefreshEvery bounds how often a signature by an unknown key makes
// anchoring ask the engine for its validators again. Anyone may send a
// receipt signed by a key of their own; a validator that joined within it
// is still found, by the receipt's checkpoint (verifyInChain).
const keysRefreshEvery = 5 * time.Second

// keysReadWait bounds one read of the validators, shared by the requests
// waiting for it.
const keysReadWait = 10 * time.Second

// chainKeys returns the chain's origin and validator keys from the engine,
// cached; refresh asks again, unless it was asked within keysRefreshEvery.
func (a *App) chainKeys(ctx context.Context, refresh bool) (string, []string, error) {
	a.mu.Lock()
	if a.vkeys != nil && (!refresh || a.clock().Sub(a.keysAt) < keysRefreshEvery) {
		defer a.mu.Unlock()
		return chain.Origin(a.chainID), a.vkeys, nil
	}
	a.mu.Unlock()
	// One read serves every request waiting then; it is no one request's
	// to cancel (a client that hangs up must not fail the others), so it
	// has a bound of its own, and each request waits as long as it may.
	read := a.keysRead.DoChan("keys", func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keysReadWait)
		defer cancel()
		info, err := a.engine.Chain(rctx)
		if err != nil {
			return nil, &keysUnavailableError{err}
		}
		if len(info.Validators) == 0 {
			return nil, &keysUnavailableError{errors.New("the engine has no validators yet")}
		}
		a.mu.Lock()
		a.vkeys, a.chainID, a.keysAt = info.Validators, info.ChainID, a.clock()
		a.mu.Unlock()
		return info, nil
	})
	var res singleflight.Result
	select {
	case res = <-read:
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
	if res.Err != nil {
		return "", nil, res.Err
	}
	info := res.Val.(*engineapi.ChainInfo)
	return chain.Origin(info.ChainID), info.Validators, nil
}

// verifyReceipt checks a receipt against this chain. A signature by a
// key it does not know is checked once more with fresh keys, since
// validators join, and then against the block the chain holds at the
// receipt's height, since validators leave: a receipt signed by a
// validator removed since is good if its checkpoint is the chain's own.
func (a *App) verifyReceipt(ctx context.Context, receipt []byte) (*chain.VerifiedReceipt, error) {
	v, err := a.verifyWith(ctx, receipt, false)
	if errors.Is(err, chain.ErrSignature) {
		v, err = a.verifyWith(ctx, receipt, true)
	}
	if errors.Is(err, chain.ErrSignature) {
		sv, serr := a.verifyInChain(ctx, receipt)
		switch {
		case serr == nil:
			return sv, nil
		case errors.As(serr, new(*keysUnavailableError)):
			return nil, serr
		}
		// Not the chain's checkpoint either: the signature's is the
		// better reason.
	}
	return v, err
}

// verifyInChain holds a receipt against the chain's block at its height:
// its checkpoint only, a few hundred bytes, whatever the block's size.
func (a *App) verifyInChain(ctx context.Context, receipt []byte) (*chain.VerifiedReceipt, error) {
	height, err := chain.ReceiptHeight(receipt)
	if err != nil {
		return nil, err
	}
	if height == 0 {
		// No block has height 0; the engine would refuse the question.
		return nil, chain.ErrNotInChain
	}
	cp, err := a.engine.Checkpoint(ctx, height)
	if errors.Is(err, engineapi.ErrNotFound) {
		// No such block, or an engine of a release before the checkpoint
		// endpoint (the client moves on to a peer when its own is down):
		// the block says which, and is found only below the head.
		var b *chain.Block
		if b, err = a.engine.Block(ctx, height); err == nil {
			cp = []byte(b.Checkpoint)
		}
	}
	switch {
	case errors.Is(err, engineapi.ErrNotFound):
		return nil, chain.ErrNotInChain
	case err != nil:
		return nil, &keysUnavailableError{err}
	}
	origin, _, err := a.chainKeys(ctx, false)
	if err != nil {
		return nil, err
	}
	return chain.VerifyReceiptAtCheckpoint(receipt, cp, origin)
}

func (a *App) verifyWith(ctx context.Context, receipt []byte, refresh bool) (*chain.VerifiedReceipt, error) {
	origin, keys, err := a.chainKeys(ctx, refresh)
	if err != nil {
		return nil, err
	}
	vs, err := chain.Verifiers(keys)
	if err != nil {
		return nil, err
	}
	return chain.VerifyReceipt(receipt, vs, origin)
}
