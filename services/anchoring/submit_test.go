package anchoring

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/service"
)

// fullEngine takes anchors while its mempool has room and defers the
// rest, as the engine does, and records what each pass offers it.
type fullEngine struct {
	t       *testing.T
	mu      sync.Mutex
	room    int
	offered [][]string
	seen    map[string]bool // this pass
	cancel  context.CancelFunc
}

func (e *fullEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var txs []struct{ Tx string }
	if err := json.NewDecoder(r.Body).Decode(&txs); err != nil || r.URL.Path != "/api/v1/transactions" {
		http.Error(w, "bad submission", http.StatusBadRequest)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var batch []string
	out := engineapi.SubmitResponse{}
	for _, tx := range txs {
		if e.seen[tx.Tx] {
			e.t.Errorf("%s offered twice in one pass", tx.Tx)
			e.cancel() // a pass that goes round for ever
		}
		e.seen[tx.Tx] = true
		batch = append(batch, tx.Tx)
		st := engineapi.TxStatus{ID: tx.Tx, Status: engineapi.StatusPending}
		if e.room == 0 {
			st.Status, st.Code = engineapi.StatusDeferred, engineapi.CodeMempoolFull
		} else {
			e.room--
		}
		out.Transactions = append(out.Transactions, st)
	}
	e.offered = append(e.offered, batch)
	_ = json.NewEncoder(w).Encode(out)
}

// TestOldestAnchorsTakeTheRoomFirst: each pass offers the engine the
// pending anchors in the order they were accepted, batch after batch
// from where the last one ended. A pass stops at a batch the engine
// deferred anchors of (its mempool full), and the deferred ones are not
// held back as sent: the next pass offers them before any newer anchor,
// so the room that frees goes to the oldest.
func TestOldestAnchorsTakeTheRoomFirst(t *testing.T) {
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	eng := &fullEngine{t: t}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	a := &App{
		batch: 2, resubmitAfter: time.Hour, store: s, engine: engineapi.New(srv.URL, srv.Client()),
		logger: slog.New(slog.NewTextHandler(io.Discard, nil)), submitted: map[string]time.Time{},
		sealed: prometheus.NewCounter(prometheus.CounterOpts{Name: "sealed"}), refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"}),
	}
	pass := func(room int) ([][]string, bool) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		eng.mu.Lock()
		eng.room, eng.offered, eng.seen, eng.cancel = room, nil, map[string]bool{}, cancel
		eng.mu.Unlock()
		deferred, ok := a.submitPass(ctx, &service.Backoff{Min: time.Millisecond, Max: time.Millisecond})
		if !ok {
			t.Fatal("the pass ended early")
		}
		eng.mu.Lock()
		defer eng.mu.Unlock()
		return eng.offered, deferred
	}
	want := func(name string, got [][]string, deferred bool, batches [][]string, wantDeferred bool) {
		t.Helper()
		if !slices.EqualFunc(got, batches, slices.Equal) || deferred != wantDeferred {
			t.Fatalf("%s: offered %v (stopped deferred: %v), want %v (%v)", name, got, deferred, batches, wantDeferred)
		}
	}

	queueOf(t, s, "t4", "t3", "t2", "t1", "t5")
	got, deferred := pass(3)
	want("room for three", got, deferred, [][]string{{"t4", "t3"}, {"t2", "t1"}}, true)
	// t1 was deferred: with room for one, it goes before t5 and the
	// newer t0; the rest, taken, are not offered again.
	queueOf(t, s, "t0")
	got, deferred = pass(1)
	want("room for one", got, deferred, [][]string{{"t1", "t5"}}, true)
	got, deferred = pass(10)
	want("room for all", got, deferred, [][]string{{"t5", "t0"}}, false)
	if got, deferred = pass(10); len(got) != 0 || deferred {
		t.Fatalf("a pass with everything taken offered %v", got)
	}

	// Offered again each pass (resubmitAfter 0), every anchor goes once
	// a pass: each batch starts where the last one ended.
	a.resubmitAfter = 0
	got, deferred = pass(10)
	want("every anchor again", got, deferred, [][]string{{"t4", "t3"}, {"t2", "t1"}, {"t5", "t0"}}, false)

	// What was sent before resubmitAfter is forgotten on the next pass,
	// so anchors sealed meanwhile leave nothing behind.
	if _, err := s.markSealedOnly([]sealedTx{{id: "t4"}, {id: "t3"}, {id: "t2"}, {id: "t1"}, {id: "t5"}, {id: "t0"}}); err != nil {
		t.Fatal(err)
	}
	a.resubmitAfter = time.Hour
	a.mu.Lock()
	a.submitted["sealed-on-the-way"] = time.Now().Add(-2 * time.Hour)
	a.forgot = time.Now().Add(-2 * time.Second) // the last look a while ago
	a.mu.Unlock()
	if got, _ = pass(10); len(got) != 0 || len(a.submitted) != 6 {
		t.Fatalf("with nothing pending: offered %v, %d submissions kept, want the 6 of the last pass", got, len(a.submitted))
	}
}
