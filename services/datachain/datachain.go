// Package datachain is the data chain (`lucid datachain`, port 8087): a
// content-addressed store for the encrypted chunks of recorded sessions,
// with per-session RFC 6962 Merkle trees and proofs. Sealing a session
// freezes it and anchors its root on the chain through session anchoring.
package datachain

import (
	"context"
	"encoding/hex"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/logtree"
	"github.com/pickme/lucid/pkg/packstore"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/snapshot"
)

// App is the data chain service.
type App struct {
	key           []byte
	previousKeys  [][]byte
	minChunk      int
	maxChunk      int
	anchoringURL  string
	scrubInterval time.Duration
	packBytes     int
	sessionChunks int
	// reserve is the disk the data chain leaves free (LUCID_DISK_RESERVE_BYTES):
	// on a Pi its volume shares one card with the chain engine, which
	// stops when it cannot store a committed block. diskFree measures it.
	reserve  uint64
	diskFree func() (uint64, error)
	// quotas bound what one user's chunks may take on disk, by tier
	// (LUCID_QUOTA_<TIER>_BYTES; 0: no bound): without them one token
	// could fill the card for everyone.
	quotas auth.PerTier[uint64]

	store     *packstore.Store
	anchoring *anchoringapi.Client
	logger    *slog.Logger

	mu    sync.Mutex
	trees map[treeKey]*sessionTree // cached per session
	// treeLeaves counts the chunks of the cached trees; treeUses counts
	// the cache's answers, each tree's used telling its last.
	treeLeaves int
	treeUses   uint64
	// building makes one build of a session's tree serve every request
	// for it; buildSlots bound the builds at once.
	building   singleflight.Group
	buildSlots chan struct{}
	lastScrub  *packstore.ScrubReport
	scrubbing  sync.Mutex

	stored prometheus.Counter
	bytes  prometheus.Counter
	// overQuota counts chunks refused by their owner's quota, by tier.
	overQuota *prometheus.CounterVec
	builds    prometheus.Counter // session trees built (cache misses)

	// Uploads and reads hold whole chunks (up to 16 MiB, more while
	// encrypting); these bound how many are in memory at once, half of
	// them at most for one user.
	putSlots *fairSlots
	getSlots *fairSlots
	loops    sync.WaitGroup
}

// treeKey names a session: its owner and id.
type treeKey struct{ owner, session string }

// sessionTree is a session's Merkle tree over its chunk ids, in index
// order, as of a chunk count.
type sessionTree struct {
	ids     []string
	tree    *logtree.Tree
	root    []byte
	version uint64
	used    uint64 // App.treeUses when the cache last gave it, under App.mu
}

var _ service.App = (*App)(nil)

// New returns the data chain, ready to be configured.
func New() service.App { return &App{} }

// Configure reads the limits, the encryption key ring (ENCRYPTION_KEY and
// ENCRYPTION_PREVIOUS_KEYS) and the anchoring URL.
func (a *App) Configure(r *envconfig.Reader) {
	if k := r.String("ENCRYPTION_KEY", ""); k != "" {
		if len(k) < 32 {
			r.Fail("ENCRYPTION_KEY", "is %d bytes; at least 32 are required", len(k))
		}
		a.key = []byte(k)
	}
	previous, err := keyring.Parse(r.String(keyring.EncryptionPrevious, ""))
	if err != nil {
		r.Fail(keyring.EncryptionPrevious, "%v", err)
	}
	for i, e := range previous {
		if len(e.Value) < 32 {
			r.Fail(keyring.EncryptionPrevious, "entry %d is %d bytes; at least 32 are required", i+1, len(e.Value))
		}
		a.previousKeys = append(a.previousKeys, e.Value)
	}
	a.minChunk = r.Int("LUCID_CHUNK_MIN_BYTES", 1<<10, 1, 16<<20)
	a.maxChunk = r.Int("LUCID_CHUNK_MAX_BYTES", 16<<20, 1, 64<<20)
	if a.minChunk > a.maxChunk {
		r.Fail("LUCID_CHUNK_MIN_BYTES", "is larger than LUCID_CHUNK_MAX_BYTES")
	}
	a.anchoringURL = r.URLList("LUCID_ANCHORING_URL", "http://127.0.0.1:8085")
	a.scrubInterval = r.Duration("LUCID_SCRUB_INTERVAL", 24*time.Hour, time.Minute, 30*24*time.Hour)
	a.packBytes = r.Int("LUCID_PACK_MAX_BYTES", 1<<30, 1<<20, 1<<40)
	a.sessionChunks = r.Int("LUCID_SESSION_MAX_CHUNKS", 100_000, 1, 1_000_000)
	a.reserve = uint64(r.Int(envDiskReserve, 1<<30, 0, 1<<40))
	a.quotas = auth.PerTier[uint64]{}
	for _, t := range auth.Tiers {
		a.quotas[t] = uint64(r.Int(quotaSetting(t), defaultQuotas.Of(t), 0, 1<<50))
	}
}

// defaultQuotas are what one user's chunks may take, by tier: a free
// user a gigabyte, a premium one sixteen, an enterprise one without a
// bound of its own (the disk reserve still keeps the card from filling).
var defaultQuotas = auth.PerTier[int]{auth.TierFree: 1 << 30, auth.TierPremium: 16 << 30, auth.TierEnterprise: 0}

// quotaSetting names the variable of tier's quota.
func quotaSetting(t auth.Tier) string { return "LUCID_QUOTA_" + strings.ToUpper(string(t)) + "_BYTES" }

// envDiskReserve is how many bytes of its disk the data chain leaves free.
const envDiskReserve = "LUCID_DISK_RESERVE_BYTES"

// Provision opens the store and starts the periodic scrub.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	var err error
	a.store, err = packstore.Open(packstore.Options{Dir: filepath.Join(srv.Config().DataDir, "chunks"), Key: a.key, PreviousKeys: a.previousKeys, MaxPackBytes: int64(a.packBytes), MaxSessionChunks: uint64(a.sessionChunks)})
	if err != nil {
		return err
	}
	dir := filepath.Join(srv.Config().DataDir, "chunks")
	a.diskFree = func() (uint64, error) { return diskFree(dir) }
	if free, err := a.diskFree(); err == nil && a.reserve > 0 && free < a.reserve {
		srv.Logger().Warn("the disk has less free than the data chain keeps in reserve: it stores no new chunk until space is freed",
			"free_bytes", free, "reserve_bytes", a.reserve, "setting", envDiskReserve)
	}
	a.anchoring = anchoringapi.New(a.anchoringURL, srv.Client("anchoring", 30*time.Second))
	a.logger = srv.Logger()
	a.trees = map[treeKey]*sessionTree{}
	a.buildSlots = make(chan struct{}, treeBuilds)
	a.putSlots, a.getSlots = newFairSlots(8, 4), newFairSlots(16, 8)
	a.stored = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_datachain_chunks_stored_total", Help: "Chunks stored (new bytes)."})
	a.bytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_datachain_bytes_stored_total", Help: "Chunk bytes received and stored."})
	a.builds = prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_datachain_session_trees_built_total", Help: "Session Merkle trees built from the store (requests the tree cache did not answer)."})
	a.overQuota = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lucid_datachain_quota_refusals_total", Help: "New chunks refused because they would take their owner past its tier's quota."}, []string{"tier"})
	srv.Registerer().MustRegister(a.stored, a.bytes, a.builds, a.overQuota)
	srv.AddCheck("store", func(context.Context) error {
		_, err := a.store.Stats()
		return err
	})
	if _, err := snapshot.Register(ctx, srv, a.takeSnapshot); err != nil {
		return err
	}
	a.loops.Add(1)
	go func() {
		defer a.loops.Done()
		a.scrubLoop(ctx)
	}()
	(&api{app: a}).routes(srv)
	return nil
}

// Close waits for the scrub loop (its context has ended) and closes the
// store.
func (a *App) Close() error {
	a.loops.Wait()
	if a.store != nil {
		return a.store.Close()
	}
	return nil
}

func (a *App) scrubLoop(ctx context.Context) {
	t := time.NewTicker(a.scrubInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := a.scrub(ctx); err != nil && ctx.Err() == nil {
				a.logger.Warn("scrub failed", "error", err)
			}
			if rep, err := a.store.Compact(ctx); err != nil && ctx.Err() == nil {
				a.logger.Warn("compaction failed", "error", err)
			} else if rep != nil && len(rep.Packs) > 0 {
				a.logger.Info("compacted", "packs", rep.Packs, "reclaimed_bytes", rep.ReclaimedBytes)
			}
		}
	}
}

// scrub runs one scrub at a time and keeps its report.
func (a *App) scrub(ctx context.Context) (*packstore.ScrubReport, error) {
	a.scrubbing.Lock()
	defer a.scrubbing.Unlock()
	rep, err := a.store.Scrub(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range rep.Damaged {
		a.logger.Error("damaged chunk", "chunk", d.ID, "sessions", d.Sessions, "error", d.Error)
	}
	a.mu.Lock()
	a.lastScrub = rep
	a.mu.Unlock()
	return rep, nil
}

// Session trees are built whole in memory, about 330 bytes a chunk while
// held: at most treeBuilds are built at once (one build per session
// version, however many ask), and the cache holds at most treeCacheLeaves
// chunks' worth of them, and treeCacheTrees trees. The cache is every
// user's: one user's trees may take at most half of either, so that one
// user reading many sessions drops only the trees it used least, and
// never more than half of everyone else's.
const (
	treeBuilds      = 2
	treeCacheLeaves = 1 << 18
	treeCacheTrees  = 64
)

// tree returns the Merkle tree of owner's session over its current chunks;
// it is rebuilt only when the session's version has changed.
func (a *App) tree(ctx context.Context, owner, sessionID string) (*packstore.Session, *sessionTree, error) {
	sess, err := a.store.Session(owner, sessionID)
	if err != nil {
		return nil, nil, err
	}
	key := treeKey{owner, sessionID}
	a.mu.Lock()
	cached := a.trees[key]
	if cached != nil && cached.version == sess.Version {
		a.treeUses++
		cached.used = a.treeUses
	}
	a.mu.Unlock()
	if cached != nil && cached.version == sess.Version {
		return sess, cached, nil
	}
	// Owner and session id hold no NUL (subjects hold no control
	// characters, session ids are UUIDs).
	flight := owner + "\x00" + sessionID + "\x00" + strconv.FormatUint(sess.Version, 10)
	// The build is everyone's who asks for it: it waits for its slot
	// whoever of them leaves.
	ch := a.building.DoChan(flight, func() (any, error) {
		// A build that ended since this request missed the cache left
		// the tree there.
		a.mu.Lock()
		cached := a.trees[key]
		a.mu.Unlock()
		if cached != nil && cached.version == sess.Version {
			return &builtTree{sess, cached}, nil
		}
		a.buildSlots <- struct{}{}
		defer func() { <-a.buildSlots }()
		return a.buildTree(owner, sessionID)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, nil, res.Err
		}
		st := res.Val.(*builtTree)
		return st.sess, st.tree, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// builtTree is what one build gives every caller waiting for it.
type builtTree struct {
	sess *packstore.Session
	tree *sessionTree
}

// buildTree builds owner's session's tree from the store and caches it.
func (a *App) buildTree(owner, sessionID string) (*builtTree, error) {
	a.builds.Inc()
	sess, ids, err := a.store.SessionChunks(owner, sessionID)
	if err != nil {
		return nil, err
	}
	t, _ := logtree.New(logtree.MemoryStore{}, 0)
	for _, id := range ids {
		raw, err := hex.DecodeString(id)
		if err != nil {
			return nil, err
		}
		if _, err := t.AppendLeaf(raw); err != nil {
			return nil, err
		}
	}
	root, err := t.Root()
	if err != nil {
		return nil, err
	}
	st := &sessionTree{ids: ids, tree: t, root: root, version: sess.Version}
	key := treeKey{owner, sessionID}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.trees[key]; old != nil {
		a.treeLeaves -= len(old.ids)
		delete(a.trees, key)
	}
	if len(ids) > treeCacheLeaves/2 {
		return &builtTree{sess, st}, nil // too big to keep
	}
	a.makeRoom(owner, len(ids))
	a.treeUses++
	st.used = a.treeUses
	a.trees[key] = st
	a.treeLeaves += len(ids)
	return &builtTree{sess, st}, nil
}

// makeRoom drops cached trees, least recently used first, until one of
// owner's with leaves chunks fits: owner's own while it holds its half of
// the cache's trees or chunks, then anyone's. Called with a.mu held.
func (a *App) makeRoom(owner string, leaves int) {
	for {
		ownTrees, ownLeaves := 0, 0
		for k, t := range a.trees {
			if k.owner == owner {
				ownTrees++
				ownLeaves += len(t.ids)
			}
		}
		onlyOwn := ownTrees >= treeCacheTrees/2 || ownLeaves+leaves > treeCacheLeaves/2
		if !onlyOwn && len(a.trees) < treeCacheTrees && a.treeLeaves+leaves <= treeCacheLeaves {
			return
		}
		var victim treeKey
		var oldest *sessionTree
		for k, t := range a.trees {
			if (!onlyOwn || k.owner == owner) && (oldest == nil || t.used < oldest.used) {
				victim, oldest = k, t
			}
		}
		if oldest == nil {
			return // nothing of owner's left to drop: it fits its half
		}
		a.treeLeaves -= len(oldest.ids)
		delete(a.trees, victim)
	}
}
