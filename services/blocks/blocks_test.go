package blocks

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// fakeEngine serves a chain the way the engine does (info, blocks, the
// follow stream, consistency proofs). It stands in for an engine that
// serves a forged block or a rewritten history; set swaps the chain.
type fakeEngine struct {
	*httptest.Server
	mu sync.Mutex
	c  *chaintest.Chain
}

func (f *fakeEngine) set(c *chaintest.Chain) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.c = c
}

func newFakeEngine(t *testing.T, c *chaintest.Chain) *fakeEngine {
	f := &fakeEngine{c: c}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		c := f.c
		f.mu.Unlock()
		switch {
		case r.URL.Path == "/api/v1/chain":
			_ = json.NewEncoder(w).Encode(map[string]any{"chain_id": chaintest.ChainID, "height": len(c.Blocks)})
		case r.URL.Path == "/api/v1/consistency":
			from, _ := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
			to, _ := strconv.ParseUint(r.URL.Query().Get("to"), 10, 64)
			p, err := c.Tree.ConsistencyProof(from, to)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			var enc []string
			for _, h := range p {
				enc = append(enc, base64.StdEncoding.EncodeToString(h))
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"from": from, "to": to, "proof": enc})
		case strings.HasPrefix(r.URL.Path, "/api/v1/blocks/stream"):
			from, _ := strconv.ParseUint(r.URL.Query().Get("from"), 10, 64)
			for _, b := range c.Blocks {
				if b.Height >= from {
					enc, _ := b.Encode()
					_, _ = w.Write(append(enc, '\n'))
				}
			}
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case strings.HasPrefix(r.URL.Path, "/api/v1/blocks/"):
			h, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/api/v1/blocks/"))
			if h < 1 || h > len(c.Blocks) {
				http.NotFound(w, r)
				return
			}
			enc, _ := c.Blocks[h-1].Encode()
			_, _ = w.Write(enc)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func startApp(t *testing.T, engineURL string, env map[string]string) (*App, http.Handler) {
	t.Helper()
	env["BLOCKCHAIN_ENGINE_URL"] = engineURL
	env["LUCID_CHAIN_ID"] = chaintest.ChainID
	app := New().(*App)
	r := envconfig.New(envconfig.Map(env))
	app.Configure(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	srv := service.New(service.Config{Name: "blocks", DataDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = app.Close() })
	return app, srv.Handler()
}

// forge alters the first transaction of c's block i (from 0), keeping its
// signature: a forged block.
func forge(c *chaintest.Chain, i int) {
	forged := *c.Blocks[i]
	forged.Transactions = append([]json.RawMessage(nil), forged.Transactions...)
	forged.Transactions[0] = json.RawMessage(strings.Replace(string(forged.Transactions[0]), "operator@", "mallory@", 1))
	c.Blocks[i] = &forged
}

// TestForgedBlockIsRefused: the third block carries an altered
// transaction; the block manager indexes the first two, refuses the third
// with the reason, and reports it on status and /ready.
func TestForgedBlockIsRefused(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	c.Append(chaintest.Anchor(2))
	c.Append(chaintest.Anchor(3))
	forge(c, 2)
	eng := newFakeEngine(t, c)

	app, h := startApp(t, eng.URL, map[string]string{})
	testenv.Eventually(t, 10*time.Second, "the forged block refused", func() bool { return app.rejection() != nil })
	if app.store.Height() != 2 {
		t.Errorf("indexed height = %d, want 2", app.store.Height())
	}
	rj := app.rejection()
	if rj.Height != 3 || !strings.Contains(rj.Reason, "root does not match the transactions") {
		t.Errorf("rejection = %+v", rj)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/ready", nil))
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), "refused block") {
		t.Errorf("/ready = %d %s", rec.Code, rec.Body)
	}
}

// TestPinnedValidatorsRefuseAForeignGenesis: with LUCID_VALIDATOR_KEYS set,
// a chain started by another key is refused from its first block.
func TestPinnedValidatorsRefuseAForeignGenesis(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	_, other := chaintest.Key("someone-else", 5)
	app, _ := startApp(t, newFakeEngine(t, c).URL, map[string]string{"LUCID_VALIDATOR_KEYS": other})
	testenv.Eventually(t, 10*time.Second, "the foreign genesis refused", func() bool { return app.rejection() != nil })
	if !strings.Contains(app.rejection().Reason, "not signed by a known validator") {
		t.Errorf("reason = %q", app.rejection().Reason)
	}
}

// TestRewrittenHistoryIsRefused: after indexing an engine's chain, the
// block manager meets the engine again with a longer chain whose past was
// rewritten; the consistency proof fails and the new chain is refused.
func TestRewrittenHistoryIsRefused(t *testing.T) {
	a := chaintest.New()
	a.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	a.Append(chaintest.Anchor(3))
	eng := newFakeEngine(t, a)
	app, _ := startApp(t, eng.URL, map[string]string{})
	testenv.Eventually(t, 10*time.Second, "indexed", func() bool { return app.store.Height() == 2 })

	b := chaintest.New() // same key, other history
	b.Append(chaintest.Anchor(1), chaintest.Anchor(99))
	b.Append(chaintest.Anchor(3))
	b.Append(chaintest.Anchor(4))
	b.Append(chaintest.Anchor(5))
	eng.set(b)
	eng.CloseClientConnections() // the engine "restarts"
	testenv.Eventually(t, 15*time.Second, "refused", func() bool { return app.rejection() != nil })
	if r := app.rejection(); !strings.Contains(r.Reason, "does not extend the verified one") || !strings.Contains(r.Reason, "history was rewritten") {
		t.Errorf("reason = %q", r.Reason)
	}
	if app.store.Height() != 2 {
		t.Errorf("height = %d after the rewrite", app.store.Height())
	}
}

// TestStatusKeepsInternalErrorsToTheLog: the status every user may read
// says that following the engine failed, never the error itself, which
// names the engine's internal address; a refused block says why.
func TestStatusKeepsInternalErrorsToTheLog(t *testing.T) {
	dead := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	app, _ := startApp(t, "http://"+dead, map[string]string{})
	lastErr := func() string { app.mu.Lock(); defer app.mu.Unlock(); return app.lastErr }
	testenv.Eventually(t, 10*time.Second, "the engine's failure recorded", func() bool { return lastErr() != "" })
	if e := lastErr(); strings.Contains(e, dead) || !strings.Contains(e, "log says why") {
		t.Errorf("last_error = %q, want the fixed message without the engine's address", e)
	}

	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	c.Append(chaintest.Anchor(2))
	forge(c, 1)
	app, _ = startApp(t, newFakeEngine(t, c).URL, map[string]string{})
	testenv.Eventually(t, 10*time.Second, "the refused block recorded", func() bool { return lastErr() != "" })
	if e := lastErr(); !strings.Contains(e, "block 2 rejected") {
		t.Errorf("last_error = %q, want the refused block and why", e)
	}
}

// TestAStorageFailureIsNoRefusal: a block the index cannot store (a full
// disk, an I/O error; here a closed store) is not recorded as refused,
// which /ready and the users' status would show with the store's own
// error, but comes back as an error to retry.
func TestAStorageFailureIsNoRefusal(t *testing.T) {
	dead := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	app, _ := startApp(t, "http://"+dead, map[string]string{})
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	if err := app.store.Close(); err != nil {
		t.Fatal(err)
	}
	err := app.index(c.Blocks[0])
	var be *chain.BlockError
	if !errors.Is(err, errStoring) || errors.As(err, &be) || app.rejection() != nil {
		t.Errorf("index on a failing store: %v (rejection %+v), want an error that is no refusal", err, app.rejection())
	}
}
