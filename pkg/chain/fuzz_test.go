package chain_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

func seed(f *testing.F, files ...string) {
	for _, name := range files {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// Every decoder: no panic on any input, and whatever decodes re-encodes to
// the same bytes (one value, one encoding).

func FuzzDecodeTransaction(f *testing.F) {
	seed(f, "transaction.json")
	f.Add([]byte(`{"system":{"action":"add_validator","key":"k"},"type":"system"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tx, err := chain.DecodeTransaction(b)
		if err != nil {
			return
		}
		again, err := tx.Encode()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decode(%q) re-encodes to %q (%v)", b, again, err)
		}
		_ = tx.Validate()
	})
}

func FuzzParseHeaderBody(f *testing.F) {
	seed(f, "header.txt")
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := chain.ParseHeaderBody(b)
		if err != nil {
			return
		}
		if !bytes.Equal(h.Body(), b) {
			t.Fatalf("header %q re-encodes to %q", b, h.Body())
		}
	})
}

func FuzzOpenHeader(f *testing.F) {
	seed(f, "checkpoint.note")
	vs := chaintest.New().Verifiers()
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := chain.OpenHeader(b, vs)
		if err != nil {
			return
		}
		if _, err := chain.ParseHeaderBody(h.Body()); err != nil {
			t.Fatalf("opened header does not re-parse: %v", err)
		}
	})
}

func FuzzParseReceipt(f *testing.F) {
	seed(f, "receipt.tlog-proof")
	vs := chaintest.New().Verifiers()
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := chain.ParseReceipt(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Marshal(), b) {
			t.Fatalf("receipt %q re-encodes differently", b)
		}
		_, _ = chain.VerifyReceipt(b, vs, "")
	})
}

func FuzzDecodeBlock(f *testing.F) {
	seed(f, "block.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		blk, err := chain.DecodeBlock(b)
		if err != nil {
			return
		}
		enc, err := blk.Encode()
		if err != nil || !bytes.Equal(enc, bytes.TrimSpace(b)) {
			t.Fatalf("block %q re-encodes to %q (%v)", b, enc, err)
		}
	})
}
