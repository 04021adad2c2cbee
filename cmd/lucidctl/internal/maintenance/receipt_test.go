package maintenance

import (
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

// TestLiftReceiptOfARemovedValidator: `fence lift --receipt` takes a
// receipt signed by a validator the chain removed since (a dead Pi's) when
// its checkpoint is the engine's own block, and refuses one that key signs
// for any other block, in the chain's range or above it.
func TestLiftReceiptOfARemovedValidator(t *testing.T) {
	c, _ := chaintest.HandedOver() // blocks 1-2 by A, 3-4 by B, who removed A
	srv := httptest.NewServer(c.EngineAPI(c.Verifier))
	defer srv.Close()
	eng := engineapi.New(srv.URL, srv.Client())
	ctx := t.Context()

	for _, tc := range []struct {
		name          string
		index, height int
	}{
		{"signed by A, removed since", 1, 1},
		{"signed by B", 4, 4},
	} {
		v, err := verifyReceipt(ctx, eng, c.Receipt(uint64(tc.index), tc.height).Marshal())
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if v.Header.Height != uint64(tc.height) {
			t.Errorf("%s: height %d, want %d", tc.name, v.Header.Height, tc.height)
		}
	}

	// A's key, were it stolen, signs another block 1, and a block past the
	// engine's head: neither is taken.
	forged := chaintest.New()
	forged.Append(chaintest.Anchor(7))
	for range 4 {
		forged.Append(chaintest.Anchor(8))
	}
	for _, h := range []int{1, 5} {
		_, err := verifyReceipt(ctx, eng, forged.Receipt(uint64(h), h).Marshal())
		var bad *badReceiptError
		if !errors.As(err, &bad) || !errors.Is(err, chain.ErrSignature) {
			t.Errorf("a receipt the removed key signed at height %d: %v, want a bad receipt for its signature", h, err)
		}
	}

	// A transaction altered under the chain's own checkpoint is caught.
	r := c.Receipt(1, 1)
	r.Index = 0
	if _, err := verifyReceipt(ctx, eng, r.Marshal()); !errors.As(err, new(*badReceiptError)) {
		t.Errorf("an altered receipt: %v, want a bad receipt", err)
	}
}
