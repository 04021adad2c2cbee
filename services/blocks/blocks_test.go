package blocks

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// fakeEngine streams a fixed list of blocks, as the engine's follow stream
// does. It stands in for an engine that serves a forged block.
func fakeEngine(t *testing.T, blocks []*chain.Block) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/chain" {
			_, _ = io.WriteString(w, `{"chain_id":"test"}`)
			return
		}
		from := uint64(1)
		if v := r.URL.Query().Get("from"); v != "" {
			_ = json.Unmarshal([]byte(v), &from)
		}
		for _, b := range blocks {
			if b.Height >= from {
				enc, _ := b.Encode()
				_, _ = w.Write(append(enc, '\n'))
			}
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
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

// TestForgedBlockIsRefused: the third block carries an altered
// transaction; the block manager indexes the first two, refuses the third
// with the reason, and reports it on status and /ready.
func TestForgedBlockIsRefused(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	c.Append(chaintest.Anchor(2))
	c.Append(chaintest.Anchor(3))
	forged := *c.Blocks[2]
	forged.Transactions = append([]json.RawMessage(nil), forged.Transactions...)
	forged.Transactions[0] = json.RawMessage(strings.Replace(string(forged.Transactions[0]), "operator@", "mallory@", 1))
	eng := fakeEngine(t, []*chain.Block{c.Blocks[0], c.Blocks[1], &forged})

	app, h := startApp(t, eng.URL, map[string]string{})
	deadline := time.Now().Add(10 * time.Second)
	for app.rejection() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the forged block was not refused")
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	app, _ := startApp(t, fakeEngine(t, c.Blocks).URL, map[string]string{"LUCID_VALIDATOR_KEYS": other})
	deadline := time.Now().Add(10 * time.Second)
	for app.rejection() == nil {
		if time.Now().After(deadline) {
			t.Fatal("foreign genesis accepted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(app.rejection().Reason, "not signed by a known validator") {
		t.Errorf("reason = %q", app.rejection().Reason)
	}
}
