package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := user.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		_ = json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// TestBlockManagerFollowsAndSurvivesEngineRestart: the block manager
// verifies and indexes what the engine seals, serves lookups and proofs,
// keeps following across a kill -9 of the engine, and its audit passes.
func TestBlockManagerFollowsAndSurvivesEngineRestart(t *testing.T) {
	s := startStack(t)
	bm := newProc(t, "blocks", "BLOCKCHAIN_ENGINE_URL="+s.engine.url, "LUCID_CHAIN_ID=e2e")
	bm.start()
	ctx := context.Background()

	tx := chaintest.Anchor(42)
	raw, _ := tx.Encode()
	if _, err := s.client.Submit(ctx, [][]byte{raw}); err != nil {
		t.Fatal(err)
	}
	id := chain.TxID(raw)
	var info struct {
		ID     string
		Height uint64
		Index  uint64
	}
	testenv.Eventually(t, 20*time.Second, "indexed by the block manager", func() bool {
		return getJSON(t, bm.url+"/api/v1/chain/anchors/"+tx.Anchor.SessionID, &info) == 200
	})
	if info.ID != id {
		t.Fatalf("anchor lookup = %+v", info)
	}
	resp, err := user.Get(bm.url + "/api/v1/chain/proofs/" + id)
	if err != nil {
		t.Fatal(err)
	}
	proof, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ci, _ := s.client.Chain(ctx)
	vs, _ := chain.Verifiers(ci.Validators)
	if _, err := chain.VerifyReceipt(proof, vs, ""); err != nil {
		t.Fatalf("block manager proof: %v", err)
	}

	// The engine dies and comes back; the block manager keeps up.
	s.engine.kill()
	s.engine.start()
	after, _ := s.client.Chain(ctx)
	testenv.Eventually(t, 20*time.Second, "following again after the engine restart", func() bool {
		var st struct{ Height uint64 }
		getJSON(t, bm.url+"/api/v1/chain/status", &st)
		return st.Height >= max(after.Height+1, 3)
	})

	var page struct {
		Blocks []struct{ Height uint64 }
		Next   *uint64
	}
	if code := getJSON(t, bm.url+"/api/v1/blocks?limit=2", &page); code != 200 || len(page.Blocks) != 2 || page.Blocks[0].Height <= page.Blocks[1].Height || page.Next == nil {
		t.Errorf("page = %d %+v", code, page)
	}
	resp, err = user.Get(bm.url + "/api/v1/chain/verify")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var last map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		_ = json.Unmarshal(sc.Bytes(), &last)
	}
	if last["done"] != true || last["ok"] != true {
		t.Errorf("audit verdict = %v", last)
	}
	if code := getJSON(t, bm.url+"/api/v1/blocks?limit=1000", nil); code != 400 {
		t.Errorf("limit 1000 = %d, want 400", code)
	}
}
