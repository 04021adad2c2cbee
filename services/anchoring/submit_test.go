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
	"testing/synctest"
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

// pacedEngine answers submissions in memory, deferring every anchor while
// it is full, and records when each submission came.
type pacedEngine struct {
	mu    sync.Mutex
	full  bool
	times []time.Time
}

func (e *pacedEngine) RoundTrip(r *http.Request) (*http.Response, error) {
	defer r.Body.Close() // a RoundTripper closes the request's body
	var txs []struct{ Tx string }
	if err := json.NewDecoder(r.Body).Decode(&txs); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.times = append(e.times, time.Now())
	out := engineapi.SubmitResponse{}
	for _, tx := range txs {
		st := engineapi.TxStatus{ID: tx.Tx, Status: engineapi.StatusPending}
		if e.full {
			st.Status, st.Code = engineapi.StatusDeferred, engineapi.CodeMempoolFull
		}
		out.Transactions = append(out.Transactions, st)
	}
	rec := httptest.NewRecorder()
	_ = json.NewEncoder(rec).Encode(out)
	return rec.Result(), nil
}

// submissions is when the engine was offered anchors, after since.
func (e *pacedEngine) submissions(since time.Time) []time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(e.times), func(at time.Time) bool { return at.Before(since) })
}

// advance moves a synctest bubble's clock on by d, and returns once every
// goroutine in it waits again.
func advance(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
	synctest.Wait()
}

// TestAFullEngineSlowsThePasses: while the engine defers every anchor,
// new anchors arriving every 10 ms do not each start a pass that it
// would turn away: the passes come 0.1 s, 0.2 s, ... apart, at most 5 s
// (and the ticker's second). Once the engine takes anchors again, a new
// anchor is offered at once.
func TestAFullEngineSlowsThePasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := openStore(filepath.Join(t.TempDir(), "anchors.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer closeStore(t, s)
		eng := &pacedEngine{full: true}
		a := &App{
			batch: 10, resubmitAfter: time.Hour, store: s, engine: engineapi.New("http://engine.test", &http.Client{Transport: eng}),
			logger: slog.New(slog.NewTextHandler(io.Discard, nil)), submitted: map[string]time.Time{}, kick: make(chan struct{}, 1),
			sealed: prometheus.NewCounter(prometheus.CounterOpts{Name: "sealed"}), refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "refused"}),
		}
		queueOf(t, s, "t1")
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		wg.Go(func() { a.submitLoop(ctx) })
		wg.Go(func() {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					a.poke()
				}
			}
		})
		start := time.Now()
		advance(30 * time.Second)
		passes := eng.submissions(start)
		// 0.1+0.2+0.4+0.8+1.6+3.2 s, then 5 s each: about ten in 30 s,
		// where a pass a kick would be three thousand.
		if n := len(passes); n < 8 || n > 12 {
			t.Errorf("%d passes in 30s while the engine was full, want about ten", n)
		}
		for i := 1; i < len(passes); i++ {
			gap := passes[i].Sub(passes[i-1])
			want := min(100*time.Millisecond<<(i-1), 5*time.Second)
			if gap < want || gap > want+time.Second {
				t.Errorf("pass %d came %s after the one before, want %s to %s", i, gap, want, want+time.Second)
			}
		}

		// Room again: the next pass is taken, and the wait starts over.
		eng.mu.Lock()
		eng.full = false
		eng.mu.Unlock()
		advance(6 * time.Second)
		queueOf(t, s, "t2")
		taken := time.Now()
		advance(100 * time.Millisecond)
		if got := eng.submissions(taken); len(got) != 1 || got[0].Sub(taken) > 20*time.Millisecond {
			t.Errorf("a new anchor once the engine has room: offered at %v, want within 20ms of %v", got, taken)
		}
		cancel()
		wg.Wait()
	})
}
