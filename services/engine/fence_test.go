package engine

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/hashicorp/raft"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// restoreFixture is a node's backup and what the node did after it: the
// blocks it sealed, and its signing guard at the end.
type restoreFixture struct {
	cfg          Config // the original node's
	backup       string // a copy of its data directory at backupHeight
	backupHeight uint64
	later        []*chain.Block // the blocks it sealed after the backup
	laterGuard   string         // its guard.db after them
}

// newRestoreFixture runs a node to a few blocks and an anchor, copies its
// data directory (the backup), then runs it on for three blocks and
// another anchor.
func newRestoreFixture(t *testing.T) *restoreFixture {
	t.Helper()
	ctx := context.Background()
	fx := &restoreFixture{cfg: nodeConfig(t, "solo", true), backup: filepath.Join(t.TempDir(), "backup")}
	n := startNode(t, fx.cfg)
	waitLeader(t, n)
	res, err := n.client.Submit(ctx, [][]byte{anchorJSON(1)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the first anchor sealed and a few blocks", func() bool {
		st, err := n.client.Tx(ctx, res.Transactions[0].ID)
		return err == nil && st.Status == engineapi.StatusSealed && st.Confirmations >= 2
	})
	n.stop()
	copyDir(t, fx.cfg.DataDir, fx.backup)
	fx.backupHeight = storeHeight(t, fx.backup)

	n = startNode(t, fx.cfg)
	waitLeader(t, n)
	res, err = n.client.Submit(ctx, [][]byte{anchorJSON(2)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "three blocks after the backup, one with an anchor", func() bool {
		st, err := n.client.Tx(ctx, res.Transactions[0].ID)
		info, err2 := n.client.Chain(ctx)
		return err == nil && err2 == nil && st.Status == engineapi.StatusSealed && info.Height >= fx.backupHeight+3
	})
	n.stop()
	s, err := chainstore.Open(filepath.Join(fx.cfg.DataDir, "chain.db"), chain.Origin(fx.cfg.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	for h := fx.backupHeight + 1; h <= s.Height(); h++ {
		b, err := s.Block(h)
		if err != nil {
			t.Fatal(err)
		}
		fx.later = append(fx.later, b)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fx.laterGuard = filepath.Join(t.TempDir(), "guard.db")
	copyFile(t, filepath.Join(fx.cfg.DataDir, "guard.db"), fx.laterGuard)
	return fx
}

func waitLeader(t *testing.T, n *testNode) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "leader", func() bool { i, err := n.client.Chain(context.Background()); return err == nil && i.Leader })
}

// top is the height the original reached: what the outside world knows.
func (fx *restoreFixture) top() uint64 { return fx.backupHeight + uint64(len(fx.later)) }

// restore makes a data directory from the backup (with the original's
// later signing guard, if asked), fences it as a restore does, and starts
// a node on it, at the original's Raft address.
func (fx *restoreFixture) restore(t *testing.T, laterGuard bool) *testNode {
	t.Helper()
	cfg := fx.cfg
	cfg.DataDir = filepath.Join(t.TempDir(), "restored")
	copyDir(t, fx.backup, cfg.DataDir)
	if laterGuard {
		copyFile(t, fx.laterGuard, filepath.Join(cfg.DataDir, "guard.db"))
	}
	writeFence(t, cfg.DataDir, engineapi.Fence{Reason: "restored", Backup: "b-1", RestoredHeight: fx.backupHeight, At: time.Now().UTC()})
	return startNode(t, cfg)
}

func writeFence(t *testing.T, dir string, f engineapi.Fence) {
	t.Helper()
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, engineapi.FenceFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func storeHeight(t *testing.T, dir string) uint64 {
	t.Helper()
	s, err := chainstore.Open(filepath.Join(dir, "chain.db"), chain.Origin("test"))
	if err != nil {
		t.Fatal(err)
	}
	h := s.Height()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return h
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		copyFile(t, p, filepath.Join(dst, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// fenceOf is GET /api/v1/fence as the operator; nil on 404.
func fenceOf(t *testing.T, n *testNode) *engineapi.FenceStatus {
	t.Helper()
	st, err := n.client.Fence(context.Background(), servicetest.OperatorToken)
	if errors.Is(err, engineapi.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func lift(n *testNode, known uint64, acceptFork bool) (*engineapi.FenceStatus, error) {
	return n.client.LiftFence(context.Background(), servicetest.OperatorToken, engineapi.LiftFenceRequest{KnownHeight: &known, AcceptFork: acceptFork, By: "alice@laptop"})
}

// waitFencedSlots waits until the node, leading, has let three slots
// pass fenced, and checks it produced nothing in them.
func waitFencedSlots(t *testing.T, n *testNode, height uint64) {
	t.Helper()
	start := metric(t, n, "lucid_engine_fenced_slots_total")
	testenv.Eventually(t, 15*time.Second, "three slots pass fenced", func() bool { return metric(t, n, "lucid_engine_fenced_slots_total") >= start+3 })
	if got := n.app.node.store.Height(); got != height {
		t.Fatalf("a fenced node produced blocks: height %d, want %d", got, height)
	}
}

// TestRestoreNeverForksSilently: a restored, fenced engine produces
// nothing however many slots pass, yet serves and takes transactions; it
// lifts only up to what it holds (its chain, its signing guard's blocks,
// imported blocks signed by its own key), or when the fork is accepted,
// which is recorded for good.
func TestRestoreNeverForksSilently(t *testing.T) {
	fx := newRestoreFixture(t)
	ctx := context.Background()

	t.Run("the guard's blocks are produced again, the same", func(t *testing.T) {
		n := fx.restore(t, true)
		waitFencedSlots(t, n, fx.backupHeight)
		if err := n.app.node.propose(nextSlot(time.Now().Add(time.Hour), time.Second)); !errors.Is(err, errFenced) {
			t.Fatalf("propose while fenced = %v, want errFenced", err)
		}
		info, err := n.client.Chain(ctx)
		if err != nil || !info.Fenced || !info.Leader || info.Height != fx.backupHeight {
			t.Fatalf("chain info while fenced: %+v %v", info, err)
		}
		if resp, err := http.Get(n.http.URL + "/ready"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("a fenced engine is not ready: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		if v := metric(t, n, "lucid_engine_fenced"); v != 1 {
			t.Errorf("lucid_engine_fenced = %v", v)
		}
		// Transactions are taken while fenced, and sealed after the lift.
		res, err := n.client.Submit(ctx, [][]byte{anchorJSON(3)})
		if err != nil || res.Transactions[0].Status != engineapi.StatusPending {
			t.Fatalf("submit while fenced: %+v %v", res, err)
		}
		st := fenceOf(t, n)
		if st == nil || !st.Fenced || st.Fence.Backup != "b-1" || st.Height != fx.backupHeight || st.GuardedHeight < fx.top() {
			t.Fatalf("fence status %+v, want fenced at %d with the guard reaching %d", st, fx.backupHeight, fx.top())
		}
		// Only the operator reads or lifts it.
		resp, err := servicetest.User("mallory").Get(n.http.URL + "/api/v1/fence")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a user reading the fence: %d", resp.StatusCode)
		}
		// Above what the guard holds: refused, naming the missing heights.
		beyond := st.GuardedHeight + 2
		_, err = lift(n, beyond, false)
		var ae *engineapi.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "heights "+itoa(st.GuardedHeight+1)+".."+itoa(beyond)+" are missing") {
			t.Fatalf("lift above the guard = %v", err)
		}
		if !n.app.node.fence.active() {
			t.Fatal("a refused lift lifted the fence")
		}

		after, err := lift(n, fx.top(), false)
		if err != nil || after.Fenced || len(after.Forks) != 0 {
			t.Fatalf("lift within the guard: %+v %v", after, err)
		}
		if _, err := os.Stat(filepath.Join(n.cfg.DataDir, engineapi.FenceFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the fence file is still there: %v", err)
		}
		testenv.Eventually(t, 15*time.Second, "production resumes past the original's height, sealing the waiting anchor", func() bool {
			st, err := n.client.Tx(ctx, res.Transactions[0].ID)
			return err == nil && st.Status == engineapi.StatusSealed && st.Height > fx.top()
		})
		for _, want := range fx.later {
			got, err := n.client.Block(ctx, want.Height)
			if err != nil || got.Hash != want.Hash {
				t.Fatalf("height %d after the lift: %v %v, want the guarded block %s", want.Height, got, err, want.Hash)
			}
		}
		if fenceOf(t, n) != nil {
			t.Error("GET /api/v1/fence after the lift answers a fence")
		}
		// Imports are for a fenced engine only.
		if _, err := n.client.ImportBlocks(ctx, servicetest.OperatorToken, fx.later[:1]); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
			t.Errorf("import into an unfenced engine = %v", err)
		}
		// The lift was durable: a restart is not fenced.
		n.stop()
		n = startNode(t, n.cfg)
		if n.app.node.fence.active() {
			t.Error("fenced again after a restart")
		}
	})

	t.Run("imported blocks, then lifted", func(t *testing.T) {
		n := fx.restore(t, false)
		waitFencedSlots(t, n, fx.backupHeight)
		st := fenceOf(t, n)
		if st.GuardedHeight >= fx.top() {
			t.Fatalf("the backup's guard reaches %d: the fixture shows nothing", st.GuardedHeight)
		}
		if _, err := lift(n, fx.top(), false); err == nil || !strings.Contains(err.Error(), "are missing") {
			t.Fatalf("lift before the import = %v", err)
		}

		// A block signed by another key, one out of order, and one whose
		// transactions are not those its header commits to: refused.
		skey, _ := chaintest.Key("solo", 9)
		other, err := note.NewSigner(skey)
		if err != nil {
			t.Fatal(err)
		}
		h, err := fx.later[0].Header()
		if err != nil {
			t.Fatal(err)
		}
		signed, err := chain.SignHeader(h, other)
		if err != nil {
			t.Fatal(err)
		}
		forged := *fx.later[0]
		forged.Checkpoint = string(signed)
		altered := *fx.later[0]
		altered.Transactions = append(append([]json.RawMessage(nil), altered.Transactions...), anchorJSON(99))
		for name, tt := range map[string]struct {
			blocks []*chain.Block
			want   string
		}{
			"forged":         {[]*chain.Block{&forged}, "not signed by this node's validator key"},
			"not contiguous": {fx.later[1:], "not the next height"},
			"altered":        {[]*chain.Block{&altered}, "transactions"},
		} {
			_, err := n.client.ImportBlocks(ctx, servicetest.OperatorToken, tt.blocks)
			var ae *engineapi.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(ae.Message, tt.want) {
				t.Errorf("%s import = %v, want 400 naming %q", name, err, tt.want)
			}
		}
		if got := n.app.node.store.Height(); got != fx.backupHeight {
			t.Fatalf("a refused import changed the chain: height %d", got)
		}

		res, err := n.client.ImportBlocks(ctx, servicetest.OperatorToken, fx.later)
		if err != nil || res.Imported != len(fx.later) || res.Status.Height != fx.top() || !res.Status.Fenced {
			t.Fatalf("import: %+v %v", res, err)
		}
		for _, b := range fx.later {
			if g, err := n.app.node.guard.signed(b.Height); err != nil || g == nil || g.Hash != b.Hash {
				t.Errorf("the guard does not hold imported block %d: %v", b.Height, err)
			}
		}
		waitFencedSlots(t, n, fx.top()) // still fenced after an import
		if _, err := lift(n, fx.top(), false); err != nil {
			t.Fatalf("lift after the import: %v", err)
		}
		testenv.Eventually(t, 15*time.Second, "production resumes", func() bool { return n.app.node.store.Height() > fx.top() })
		audit(t, n)
	})

	t.Run("an accepted fork is recorded for good", func(t *testing.T) {
		n := fx.restore(t, false)
		held := fenceOf(t, n).GuardedHeight
		st, err := lift(n, fx.top(), true)
		if err != nil || st.Fenced || len(st.Forks) != 1 {
			t.Fatalf("lift accepting the fork: %+v %v", st, err)
		}
		want := engineapi.ForkNote{From: held + 1, To: fx.top(), By: "alice@laptop", Backup: "b-1"}
		if got := st.Forks[0]; got.From != want.From || got.To != want.To || got.By != want.By || got.Backup != want.Backup || got.At.IsZero() {
			t.Errorf("fork note %+v, want %+v", got, want)
		}
		testenv.Eventually(t, 15*time.Second, "production resumes", func() bool { return n.app.node.store.Height() > fx.top() })
		n.stop()
		n = startNode(t, n.cfg)
		again := fenceOf(t, n)
		if again == nil || again.Fenced || len(again.Forks) != 1 || again.Forks[0].From != want.From {
			t.Errorf("after a restart: %+v, want the fork note and no fence", again)
		}
		if v := metric(t, n, "lucid_engine_fenced"); v != 0 {
			t.Errorf("lucid_engine_fenced = %v", v)
		}
	})
}

// metric reads a metric of n's /metrics.
func metric(t *testing.T, n *testNode, name string) float64 {
	t.Helper()
	resp, err := http.Get(n.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// audit re-verifies n's whole chain.
func audit(t *testing.T, n *testNode) {
	t.Helper()
	a := chain.NewAuditor(chain.Origin("test"), nil)
	for h := uint64(1); h <= n.app.node.store.Height(); h++ {
		b, err := n.app.node.store.Block(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Next(b); err != nil {
			t.Fatalf("audit: %v", err)
		}
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

// TestCorruptFenceStopsTheStart: a fence file that cannot be read is an
// error at start that names it, never an unfenced engine; a missing
// known_height is refused.
func TestCorruptFenceStopsTheStart(t *testing.T) {
	cfg := nodeConfig(t, "solo", true)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, engineapi.FenceFile), []byte(`{"reason":"restored"`), 0o600); err != nil {
		t.Fatal(err)
	}
	app := &App{cfg: cfg}
	srv := service.New(servicetest.Config("engine", cfg.DataDir), slog.New(slog.DiscardHandler))
	err := app.Provision(context.Background(), srv)
	if err == nil || !strings.Contains(err.Error(), "fence") || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Provision with a corrupt fence = %v", err)
	}

	writeFence(t, cfg.DataDir, engineapi.Fence{Reason: "restored"})
	n := startNode(t, cfg)
	resp, err := servicetest.Operator().Post(n.http.URL+"/api/v1/fence/lift", "application/json", strings.NewReader(`{"accept_fork":true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "known_height is required") {
		t.Errorf("lift without known_height: %d %s", resp.StatusCode, body)
	}
	if !n.app.node.fence.active() {
		t.Error("the fence was lifted")
	}
}

// TestFencedLeaderHandsOver: a restored engine of a cluster that comes to
// lead while fenced would stop the whole chain until the operator lifts
// its fence; it hands the leadership over instead, and blocks go on.
func TestFencedLeaderHandsOver(t *testing.T) {
	ctx := context.Background()
	nodes := startThreeVoters(t)
	// n3 comes back from a restore: fenced.
	cfg := nodes[2].cfg
	nodes[2].stop()
	writeFence(t, cfg.DataDir, engineapi.Fence{Reason: "restored", Backup: "b-1", At: time.Now().UTC()})
	nodes[2] = startNode(t, cfg)
	t.Cleanup(nodes[2].stop)
	if st := fenceOf(t, nodes[2]); !st.Fenced {
		t.Fatalf("n3 not fenced: %+v", st)
	}
	leader := func() *testNode {
		for _, n := range nodes {
			if n.app.node.isLeader() {
				return n
			}
		}
		return nil
	}
	var from *testNode
	testenv.Eventually(t, 15*time.Second, "a leader", func() bool { from = leader(); return from != nil && from != nodes[2] })
	testenv.Eventually(t, 15*time.Second, "n3 catches up", func() bool {
		a, errA := from.client.Chain(ctx)
		b, errB := nodes[2].client.Chain(ctx)
		return errA == nil && errB == nil && b.Height >= a.Height
	})
	// The fenced engine is made leader: it must hand over.
	if err := from.app.node.raft.LeadershipTransferToServer(raft.ServerID("n3"), raft.ServerAddress(cfg.RaftAdvertise)).Error(); err != nil {
		t.Fatalf("transfer to n3: %v", err)
	}
	info, err := nodes[0].client.Chain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "blocks go on beyond the fenced engine's lead", func() bool {
		i, err := nodes[0].client.Chain(ctx)
		return err == nil && i.Height >= info.Height+3
	})
	if metric(t, nodes[2], "lucid_engine_fenced_slots_total") < 1 {
		t.Error("n3 never led while fenced: the transfer did not happen, so the hand-over was not tested")
	}
	if metric(t, nodes[2], `lucid_engine_leadership_handovers_total{reason="fenced"}`) < 1 {
		t.Error("n3 counted no hand-over while fenced")
	}
	if n := leader(); n == nodes[2] {
		t.Error("the fenced engine leads")
	}
	if st := fenceOf(t, nodes[2]); !st.Fenced {
		t.Errorf("the fence was lifted without the operator: %+v", st)
	}
}
