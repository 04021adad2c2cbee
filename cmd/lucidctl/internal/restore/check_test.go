package restore

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

// TestCheckReceiptWithManyValidators: receipts are held against a
// restored chain that more than one validator signed, one of them removed
// since: each is in it, after it, forked from it or invalid for what it
// is, not for who signed it.
func TestCheckReceiptWithManyValidators(t *testing.T) {
	c, keyA := chaintest.HandedOver() // blocks 1-2 by A, 3-4 by B, who removed A
	vkB := c.Verifier
	c.Append(chaintest.Anchor(3)) // block 5 by B, signed after the backup
	const restoredHeight = 4

	// The restored block manager holds blocks 1-4.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, b := range c.Blocks[:restoredHeight] {
			if r.URL.Path == "/api/v1/blocks/"+strconv.FormatUint(b.Height, 10) {
				enc, _ := b.Encode()
				_, _ = w.Write(enc)
				return
			}
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	blocks := engineapi.New(srv.URL, srv.Client())

	// Block 1 as a stolen copy of A's key would sign it: another chain.
	fork := chaintest.New()
	fork.Append(chaintest.Anchor(9))

	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		receipt *chain.Receipt
		keys    []string
		want    string
	}{
		{"signed by A, removed since", c.Receipt(1, 1), []string{vkB}, ReceiptInChain},
		{"signed by B", c.Receipt(4, 4), []string{vkB}, ReceiptInChain},
		{"signed by B after the backup", c.Receipt(5, 5), []string{vkB}, ReceiptAfterBackup},
		{"another block 1, A no validator", fork.Receipt(1, 1), []string{vkB}, ReceiptInvalid},
		{"another block 1, A a validator", fork.Receipt(1, 1), []string{vkB, keyA}, ReceiptForked},
	} {
		file := filepath.Join(dir, tc.name+chain.ReceiptExt)
		if err := os.WriteFile(file, tc.receipt.Marshal(), 0o600); err != nil {
			t.Fatal(err)
		}
		if rc := checkReceipt(t.Context(), blocks, file, tc.keys, chaintest.ChainID, restoredHeight); rc.Status != tc.want {
			t.Errorf("%s: %s (%s), want %s", tc.name, rc.Status, rc.Detail, tc.want)
		}
	}
}
