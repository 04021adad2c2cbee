package anchoring

import (
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
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
