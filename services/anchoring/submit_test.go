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

// TestDeferredAnchorsGoFirstAgain: while the engine defers anchors (its
// mempool full), each pass offers it the pending ones in the order they
// were accepted, batch after batch: an anchor accepted early is offered
// before every newer one, whatever its id.
func TestDeferredAnchorsGoFirstAgain(t *testing.T) {
	var mu sync.Mutex
	var offered [][]string
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var txs []struct{ Tx string }
		if err := json.NewDecoder(r.Body).Decode(&txs); err != nil || r.URL.Path != "/api/v1/transactions" {
			http.Error(w, "bad submission", http.StatusBadRequest)
			return
		}
		var batch []string
		out := engineapi.SubmitResponse{}
		for _, tx := range txs {
			batch = append(batch, tx.Tx)
			out.Transactions = append(out.Transactions, engineapi.TxStatus{ID: tx.Tx, Status: engineapi.StatusDeferred, Code: engineapi.CodeMempoolFull})
		}
		mu.Lock()
		offered = append(offered, batch)
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(out)
	}))
	defer engine.Close()
	s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	a := &App{
		batch: 2, resubmitAfter: time.Hour, store: s, engine: engineapi.New(engine.URL, engine.Client()),
		logger: slog.New(slog.NewTextHandler(io.Discard, nil)), submitted: map[string]time.Time{},
		sealed: prometheus.NewCounter(prometheus.CounterOpts{Name: "sealed"}), refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"}),
	}
	pass := func() [][]string {
		t.Helper()
		mu.Lock()
		offered = nil
		mu.Unlock()
		if !a.submitPass(context.Background(), &service.Backoff{Min: time.Millisecond, Max: time.Millisecond}) {
			t.Fatal("the pass ended early")
		}
		mu.Lock()
		defer mu.Unlock()
		return offered
	}

	queueOf(t, s, "t4", "t3", "t2", "t1", "t5")
	if got := pass(); !slices.EqualFunc(got, [][]string{{"t4", "t3"}, {"t2", "t1"}, {"t5"}}, slices.Equal) {
		t.Fatalf("first pass offered %v, want the order of acceptance in batches of 2", got)
	}
	// Within resubmitAfter, nothing goes again; a new anchor goes at once.
	queueOf(t, s, "t0")
	if got := pass(); !slices.EqualFunc(got, [][]string{{"t0"}}, slices.Equal) {
		t.Fatalf("second pass offered %v, want the new t0 alone", got)
	}
	// Once resubmitAfter has passed, the deferred ones go again, oldest first.
	a.mu.Lock()
	for id := range a.submitted {
		a.submitted[id] = time.Now().Add(-2 * time.Hour)
	}
	a.mu.Unlock()
	if got := pass(); !slices.EqualFunc(got, [][]string{{"t4", "t3"}, {"t2", "t1"}, {"t5", "t0"}}, slices.Equal) {
		t.Fatalf("third pass offered %v, want every anchor again in the order of acceptance", got)
	}
}
