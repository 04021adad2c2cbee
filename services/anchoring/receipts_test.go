package anchoring

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// TestReceiptsOfARemovedValidator: a receipt signed by a validator the
// chain has removed since (a dead Pi's, `maintenance voters remove`) still
// verifies, since its checkpoint is the chain's own block; one that the
// removed key signs for a block the chain does not hold does not.
func TestReceiptsOfARemovedValidator(t *testing.T) {
	c, _ := chaintest.HandedOver() // blocks 1-2 by A, 3-4 by B, who removed A
	vkB := c.Verifier

	// The engine, as anchoring sees it: B alone validates now.
	engine := httptest.NewServer(c.EngineAPI(vkB))
	defer engine.Close()
	a := &App{engine: engineapi.New(engine.URL, engine.Client())}
	ctx := t.Context()

	for _, tc := range []struct {
		name          string
		index, height int
	}{
		{"signed by A, removed since", 1, 1},
		{"signed by B", 4, 4},
	} {
		v, err := a.verifyReceipt(ctx, c.Receipt(uint64(tc.index), tc.height).Marshal())
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if v.Header.Height != uint64(tc.height) || v.Index != uint64(tc.index) {
			t.Errorf("%s: verified height %d index %d", tc.name, v.Header.Height, v.Index)
		}
	}

	// A's key, were it stolen, signs another block 1: not the chain's.
	forged := chaintest.New()
	forged.Append(chaintest.Anchor(7))
	if _, err := a.verifyReceipt(ctx, forged.Receipt(1, 1).Marshal()); !errors.Is(err, chain.ErrSignature) {
		t.Errorf("a receipt the removed key signed for another block 1: %v, want %v", err, chain.ErrSignature)
	}
	// Nor a block past the chain's head.
	for range 2 {
		forged.Append(chaintest.Anchor(8))
	}
	for range 2 {
		forged.Append(chaintest.Anchor(9))
	}
	if _, err := a.verifyReceipt(ctx, forged.Receipt(5, 5).Marshal()); !errors.Is(err, chain.ErrSignature) {
		t.Errorf("a receipt the removed key signed past the head: %v, want %v", err, chain.ErrSignature)
	}
}

// TestForgedReceiptAtHeightZero: a receipt whose checkpoint names height
// 0 (no block has it) is not the chain's: the engine is not asked for a
// block it would refuse, and the answer is "not valid", not a 503.
func TestForgedReceiptAtHeightZero(t *testing.T) {
	c, _ := chaintest.HandedOver()
	api := c.EngineAPI(c.Verifier)
	var blockAsks atomic.Int32 // the real engine answers height 0 with 400
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/v1/blocks/") {
			blockAsks.Add(1)
		}
		api.ServeHTTP(w, r)
	}))
	defer engine.Close()
	a := &App{engine: engineapi.New(engine.URL, engine.Client())}

	forged := chaintest.New()
	forged.Append(chaintest.Anchor(7))
	r := forged.Receipt(1, 1)
	r.Checkpoint = bytes.Replace(r.Checkpoint, []byte("\nheight 1\n"), []byte("\nheight 0\n"), 1)
	if h, err := chain.ReceiptHeight(r.Marshal()); err != nil || h != 0 {
		t.Fatalf("the forged receipt's height: %d, %v", h, err)
	}
	_, err := a.verifyReceipt(t.Context(), r.Marshal())
	if err == nil || errors.As(err, new(*keysUnavailableError)) {
		t.Fatalf("a forged receipt at height 0: %v, want it not valid", err)
	}
	if n := blockAsks.Load(); n != 0 {
		t.Errorf("the engine was asked for block 0 (%d times)", n)
	}
}

// TestVerifyHidesTheEngine: with the engine unreachable, /verify answers
// 503 without the engine's address or the transport's error, which are
// for the log: anyone may ask it.
func TestVerifyHidesTheEngine(t *testing.T) {
	hs := startAnchoring(t) // its engine is http://127.0.0.1:1
	forged := chaintest.New()
	forged.Append(chaintest.Anchor(7))
	client := servicetest.Client("gateway")
	resp, err := client.Post(hs.URL+"/api/v1/anchors/verify", "text/plain", bytes.NewReader(forged.Receipt(1, 1).Marshal()))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("verify with the engine down: %d %s", resp.StatusCode, body)
	}
	for _, s := range []string{"127.0.0.1", "connection refused", "dial tcp"} {
		if strings.Contains(string(body), s) {
			t.Errorf("the answer shows %q: %s", s, body)
		}
	}
}

// TestAForgedReceiptCostsTheEngineLittle: anyone may send receipts signed
// by a key of their own. A flood of them asks the engine for its
// validators at most once per keysRefreshEvery, and for a checkpoint each,
// never for a whole block (up to 32 MiB, decoded on both sides).
func TestAForgedReceiptCostsTheEngineLittle(t *testing.T) {
	c, _ := chaintest.HandedOver()
	api := c.EngineAPI(c.Verifier)
	var mu sync.Mutex
	asks := map[string]int{}
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		what := r.URL.Path
		if strings.HasPrefix(what, "/api/v1/blocks/") && !strings.HasPrefix(what, "/api/v1/blocks/checkpoint/") {
			what = "block"
		}
		mu.Lock()
		asks[what]++
		mu.Unlock()
		api.ServeHTTP(w, r)
	}))
	defer engine.Close()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	a := &App{engine: engineapi.New(engine.URL, engine.Client()), now: func() time.Time { return now }}
	ctx := t.Context()
	if _, err := a.verifyReceipt(ctx, c.Receipt(4, 4).Marshal()); err != nil {
		t.Fatal(err)
	}
	forged := chaintest.New()
	for range 4 {
		forged.Append(chaintest.Anchor(7))
	}
	for i := range 50 {
		if _, err := a.verifyReceipt(ctx, forged.Receipt(1, 1+i%4).Marshal()); !errors.Is(err, chain.ErrSignature) {
			t.Fatalf("forged receipt %d: %v", i, err)
		}
	}
	if asks["/api/v1/chain"] != 1 || asks["block"] != 0 || asks["/api/v1/blocks/checkpoint/1"] == 0 {
		t.Errorf("the engine was asked %v", asks)
	}
	// Past the interval, a signature by a key it does not know asks again,
	// once.
	now = now.Add(keysRefreshEvery)
	for range 5 {
		_, _ = a.verifyReceipt(ctx, forged.Receipt(1, 1).Marshal())
	}
	if asks["/api/v1/chain"] != 2 {
		t.Errorf("after the interval, the validators were asked %d times in all", asks["/api/v1/chain"])
	}
}

// TestAClientThatHangsUpFailsNoOther: the validators' read is shared by
// the requests waiting for it; the one that started it hanging up fails
// only itself.
func TestAClientThatHangsUpFailsNoOther(t *testing.T) {
	c, _ := chaintest.HandedOver()
	api := c.EngineAPI(c.Verifier)
	release := make(chan struct{})
	asked := make(chan struct{}, 1)
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/chain" {
			asked <- struct{}{}
			<-release
		}
		api.ServeHTTP(w, r)
	}))
	defer engine.Close()
	a := &App{engine: engineapi.New(engine.URL, engine.Client())}
	first, hangUp := context.WithCancel(t.Context())
	firstErr := make(chan error, 1)
	go func() {
		_, err := a.verifyReceipt(first, c.Receipt(4, 4).Marshal())
		firstErr <- err
	}()
	<-asked // the read is under way, started by the first request
	second := make(chan error, 1)
	go func() {
		_, err := a.verifyReceipt(t.Context(), c.Receipt(4, 4).Marshal())
		second <- err
	}()
	hangUp()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("the request that hung up: %v", err)
	}
	close(release)
	if err := <-second; err != nil {
		t.Errorf("another request, waiting for the same read: %v", err)
	}
}

// TestAnOlderEngineStillVerifies: an engine of a release before the
// checkpoint endpoint (a peer, while this Pi's engine is down) answers its
// path 404; a removed validator's receipt is still found in its block.
func TestAnOlderEngineStillVerifies(t *testing.T) {
	c, _ := chaintest.HandedOver()
	api := c.EngineAPI(c.Verifier)
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/v1/blocks/checkpoint/") {
			http.NotFound(w, r)
			return
		}
		api.ServeHTTP(w, r)
	}))
	defer engine.Close()
	a := &App{engine: engineapi.New(engine.URL, engine.Client())}
	if v, err := a.verifyReceipt(t.Context(), c.Receipt(1, 1).Marshal()); err != nil || v.Header.Height != 1 {
		t.Errorf("a removed validator's receipt, through an older engine: %v", err)
	}
}
