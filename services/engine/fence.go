package engine

// The restore fence. A restored engine may hold fewer blocks than the
// node it replaces sealed: that node may have handed out receipts for
// heights after the backup, and producing again from the backup's height
// would sign different blocks at those heights, a silent fork. So a
// restore writes engineapi.FenceFile into the data directory, and while it
// is there the engine serves reads and takes transactions, but signs and
// proposes nothing. The operator lifts it by telling the engine the highest
// height the outside world knows: the engine lifts only when it holds that
// height (its chain, the blocks its signing guard can re-propose exactly,
// or blocks imported from a block manager elsewhere), or when the operator
// accepts the fork, which is recorded for good.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/atomicfile"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/service"
)

// errFenced is what propose answers while the engine is fenced.
var errFenced = errors.New("the engine is fenced after a restore: it produces no block until the operator lifts the fence")

// bucketForks, in the signing guard's database, holds the fork notes: they
// travel with the guard in every backup.
var bucketForks = []byte("forks")

// fence is the engine's restore fence and the forks accepted on lifting
// one.
type fence struct {
	path string
	db   *bolt.DB // the signing guard's

	// mu serializes lifting and importing, and guards cur.
	mu  sync.Mutex
	cur *engineapi.Fence // nil when not fenced

	fenced  prometheus.Gauge
	skipped prometheus.Counter
}

// openFence reads dir's fence file, if any: a file that is there but
// cannot be read is an error, never "not fenced".
func openFence(dir string, g *guard) (*fence, error) {
	f := &fence{
		path: filepath.Join(dir, engineapi.FenceFile),
		db:   g.db,
		fenced: prometheus.NewGauge(prometheus.GaugeOpts{Name: "lucid_engine_fenced",
			Help: "1 while the engine is fenced after a restore and produces no block."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_engine_fenced_slots_total",
			Help: "Block slots passed without a block because the engine is fenced."}),
	}
	data, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the restore fence %s: %w", f.path, err)
	}
	var fc engineapi.Fence
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&fc); err != nil {
		return nil, fmt.Errorf("the restore fence %s is corrupt (%w): the engine stays down rather than produce blocks unfenced; write a valid fence or ask the restore to write it again", f.path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("the restore fence %s is corrupt (data after the JSON object): the engine stays down rather than produce blocks unfenced", f.path)
	}
	f.cur = &fc
	f.fenced.Set(1)
	return f, nil
}

// register exposes the fence's metrics.
func (f *fence) register(reg prometheus.Registerer) {
	reg.MustRegister(f.fenced, f.skipped)
}

// active reports whether the engine is fenced.
func (f *fence) active() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur != nil
}

// forks returns the fork notes, oldest first.
func (f *fence) forks() ([]engineapi.ForkNote, error) {
	var out []engineapi.ForkNote
	err := f.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketForks)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var n engineapi.ForkNote
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("fork note: %w", err)
			}
			out = append(out, n)
			return nil
		})
	})
	return out, err
}

// recordFork stores a fork note durably (bbolt fsyncs its commit).
func (f *fence) recordFork(n engineapi.ForkNote) error {
	v, err := json.Marshal(n)
	if err != nil {
		return err
	}
	return f.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketForks)
		if err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		return b.Put(heightKey(seq), v)
	})
}

// remove deletes the fence file and syncs its directory, so that a crash
// after the lift does not bring the fence back, nor a crash before it
// leave the engine unfenced.
func (f *fence) remove() error {
	if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the restore fence: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("sync the data directory: %w", err)
	}
	return nil
}

// guardedHeight is the highest height n can produce again exactly as it
// signed it: the chain's height, then each height above it whose block the
// signing guard holds on the parent before it.
func (n *node) guardedHeight() (uint64, error) {
	head := n.store.Head()
	height, prev := uint64(0), chain.ZeroHash
	if head != nil {
		height, prev = head.Height, head.Hash()
	}
	for {
		b, err := n.guard.signed(height + 1)
		if err != nil || b == nil {
			return height, err
		}
		h, err := b.Header()
		if err != nil || h.Prev != prev {
			return height, nil // not on this chain: it cannot be re-proposed
		}
		height, prev = height+1, b.Hash
	}
}

// fenceStatus is the fence as the API shows it.
func (n *node) fenceStatus() (*engineapi.FenceStatus, error) {
	n.fence.mu.Lock()
	cur := n.fence.cur
	n.fence.mu.Unlock()
	st := &engineapi.FenceStatus{Fenced: cur != nil, Fence: cur, Height: n.store.Height()}
	var err error
	if st.GuardedHeight, err = n.guardedHeight(); err != nil {
		return nil, err
	}
	if st.Forks, err = n.fence.forks(); err != nil {
		return nil, err
	}
	return st, nil
}

// liftFence lifts the fence if the node holds every height the outside
// world knows, or the operator accepts the fork.
func (n *node) liftFence(req engineapi.LiftFenceRequest) error {
	if req.KnownHeight == nil {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest,
			"known_height is required: the highest height the outside world knows (the newest receipt's, or a block manager's elsewhere)")
	}
	known := *req.KnownHeight
	f := n.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == nil {
		return service.Errorf(http.StatusConflict, service.CodeConflict, "the engine is not fenced")
	}
	held, err := n.guardedHeight()
	if err != nil {
		return err
	}
	if known > held {
		if !req.AcceptFork {
			he := service.Errorf(http.StatusConflict, engineapi.CodeFenced,
				"the outside world knows height %d but this node holds only up to %d: heights %d..%d are missing, and producing them anew would fork the chain; import them from a block manager that has them (POST /api/v1/fence/blocks), or accept the fork (accept_fork), which voids them",
				known, held, held+1, known)
			he.Fields = map[string]string{"missing_from": strconv.FormatUint(held+1, 10), "missing_to": strconv.FormatUint(known, 10)}
			return he
		}
		note := engineapi.ForkNote{From: held + 1, To: known, At: time.Now().UTC(), By: req.By, Backup: f.cur.Backup}
		// The note first: a crash between the two leaves the engine
		// fenced, with the note already saying what lifting it will void.
		if err := f.recordFork(note); err != nil {
			return fmt.Errorf("record the fork note: %w", err)
		}
		n.logger.Warn("fence lifted ACCEPTING A FORK: the blocks the outside world holds at these heights are void, and their receipts will not verify against this chain",
			"void_from", note.From, "void_to", note.To, "by", note.By, "backup", note.Backup)
	}
	if err := f.remove(); err != nil {
		return err
	}
	f.cur = nil
	f.fenced.Set(0)
	n.logger.Info("restore fence lifted; producing blocks again", "known_height", known, "height", n.store.Height(), "guarded_height", held)
	return nil
}

// importBlocks applies blocks this node signed that a block manager
// elsewhere holds, above the local height, while fenced: each is checked
// (signed by this node's key, the next height, linked, the log grown as
// its header says), recorded in the signing guard as this node's, then
// committed through Raft like a re-proposal.
func (n *node) importBlocks(blocks []*chain.Block) (int, error) {
	f := n.fence
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == nil {
		return 0, service.Errorf(http.StatusConflict, service.CodeConflict, "the engine is not fenced: blocks are imported only into a fenced engine")
	}
	if !n.isLeader() {
		return 0, notLeader(n)
	}
	own, err := chain.Verifiers([]string{n.vkey})
	if err != nil {
		return 0, err
	}
	if err := n.raft.Barrier(n.cfg.BlockInterval).Error(); err != nil {
		return 0, fmt.Errorf("barrier: %w", err)
	}
	refuse := func(i int, b *chain.Block, format string, args ...any) error {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "block %d (item %d): %s; nothing after it was imported", b.Height, i+1, fmt.Sprintf(format, args...))
	}
	for i, b := range blocks {
		want := n.store.Height() + 1
		if b.Height != want {
			return i, refuse(i, b, "not the next height (this node holds %d, so the next is %d)", want-1, want)
		}
		if _, err := chain.OpenHeader([]byte(b.Checkpoint), own); err != nil {
			return i, refuse(i, b, "not signed by this node's validator key %s: %v", n.vkey, err)
		}
		if _, err := n.store.Verify(b); err != nil {
			return i, refuse(i, b, "%v", err)
		}
		got, err := n.guard.record(b)
		if err != nil {
			return i, fmt.Errorf("record block %d in the signing guard: %w", b.Height, err)
		}
		if got.Hash != b.Hash {
			return i, service.Errorf(http.StatusConflict, service.CodeConflict,
				"block %d (item %d): the signing guard holds another block this key signed at that height (%s, not %s): the key has signed two blocks there; import refused", b.Height, i+1, got.Hash, b.Hash)
		}
		enc, err := b.Encode()
		if err != nil {
			return i, err
		}
		fut := n.raft.Apply(enc, 2*n.cfg.BlockInterval)
		if err := fut.Error(); err != nil {
			return i, fmt.Errorf("commit block %d: %w", b.Height, err)
		}
		if resp, ok := fut.Response().(error); ok && resp != nil {
			return i, fmt.Errorf("apply block %d: %w", b.Height, resp)
		}
	}
	if len(blocks) > 0 {
		n.logger.Info("imported blocks into the fenced engine", "count", len(blocks), "height", n.store.Height())
	}
	return len(blocks), nil
}

// maxImportBody bounds one import call: the client's batches and one
// block of the largest size.
const maxImportBody = engineapi.MaxImportBytes + 16<<20

// fenceRoutes installs the fence's operator endpoints.
func (a *api) fenceRoutes(srv *service.Server) {
	srv.Handle("GET /api/v1/fence", service.ForOperator(a.getFence))
	srv.Handle("POST /api/v1/fence/lift", service.ForOperator(a.liftFence))
	srv.Handle("POST /api/v1/fence/blocks", service.ForOperator(a.importBlocks))
}

// getFence answers the fence, or 404 when the engine is not fenced and
// never accepted a fork.
func (a *api) getFence(w http.ResponseWriter, _ *http.Request) error {
	st, err := a.node.fenceStatus()
	if err != nil {
		return err
	}
	if !st.Fenced && len(st.Forks) == 0 {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "the engine is not fenced")
	}
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

func (a *api) liftFence(w http.ResponseWriter, r *http.Request) error {
	var req engineapi.LiftFenceRequest
	if err := service.DecodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := a.node.liftFence(req); err != nil {
		return err
	}
	st, err := a.node.fenceStatus()
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

// importBlocks takes NDJSON blocks, in height order.
func (a *api) importBlocks(w http.ResponseWriter, r *http.Request) error {
	body := http.MaxBytesReader(w, r.Body, maxImportBody)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), maxImportBody)
	var blocks []*chain.Block
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		b, err := chain.DecodeBlock(line)
		if err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "line %d: %v", len(blocks)+1, err)
		}
		blocks = append(blocks, b)
	}
	if err := sc.Err(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) || errors.Is(err, bufio.ErrTooLong) {
			return service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "more than %d bytes in one import; send fewer blocks per call", maxImportBody)
		}
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "read blocks: %v", err)
	}
	if len(blocks) == 0 {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "no blocks: send them as NDJSON, one block per line, in height order")
	}
	imported, err := a.node.importBlocks(blocks)
	if err != nil {
		return err
	}
	st, err := a.node.fenceStatus()
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, engineapi.ImportResult{Imported: imported, Status: *st})
	return nil
}
