package storehttp_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/chainstore/storehttp"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// TestBlocksAreServedAsStored: a block is sent as the store holds it,
// canonical, so a reader decodes it as the chain's; a checkpoint is sent
// alone, as text; a height or hash not held is 404, and height 0 is 400.
func TestBlocksAreServedAsStored(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	c.Append(chaintest.Anchor(3))
	s, err := chainstore.Open(filepath.Join(t.TempDir(), "chain.db"), chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	for _, b := range c.Blocks {
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	srv := service.New(servicetest.Config("blocks", t.TempDir()), slog.New(slog.DiscardHandler))
	storehttp.Handlers{Store: s}.Register(srv)
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := servicetest.User("alice@example.org").Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
	}
	want := c.Blocks[1]
	for _, path := range []string{"/api/v1/blocks/2", "/api/v1/blocks/latest", "/api/v1/blocks/hash/" + want.Hash} {
		code, ctype, body := get(path)
		b, err := chain.DecodeBlock([]byte(body))
		if code != http.StatusOK || ctype != "application/json" || err != nil || b.Hash != want.Hash || len(b.Transactions) != 1 {
			t.Errorf("%s: %d %s %v", path, code, ctype, err)
		}
	}
	if code, _, body := get("/api/v1/blocks/checkpoint/2"); code != http.StatusOK || body != want.Checkpoint {
		t.Errorf("checkpoint of block 2: %d %q", code, body)
	}
	for path, wantCode := range map[string]int{"/api/v1/blocks/3": 404, "/api/v1/blocks/checkpoint/3": 404, "/api/v1/blocks/hash/abc": 404, "/api/v1/blocks/0": 400, "/api/v1/blocks/checkpoint/x": 400} {
		if code, _, body := get(path); code != wantCode {
			t.Errorf("%s: %d, want %d: %s", path, code, wantCode, body)
		}
	}
	var heights []uint64
	err = s.Headers(1, 5, func(h *chain.Header) error {
		heights = append(heights, h.Height)
		if h.Hash() != c.Blocks[h.Height-1].Hash {
			t.Errorf("header %d: hash %s", h.Height, h.Hash())
		}
		return nil
	})
	if err != nil || len(heights) != 2 {
		t.Errorf("headers 1..5: %v, %v", heights, err)
	}
}
