package chain_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/logtree"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed:\n got: %q\nwant: %q", name, got, want)
	}
}

func fixture(t *testing.T) *chaintest.Chain {
	t.Helper()
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2), chaintest.Anchor(3))
	c.Append()
	c.Append(chaintest.Anchor(4))
	return c
}

// TestGoldenFormats pins every wire format byte for byte.
func TestGoldenFormats(t *testing.T) {
	c := fixture(t)
	tx, err := chaintest.Anchor(1).Encode()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "transaction.json", tx)
	golden(t, "transaction.id", []byte(chain.TxID(tx)+"\n"))
	golden(t, "header.txt", c.Headers[2].Body())
	golden(t, "checkpoint.note", []byte(c.Blocks[2].Checkpoint))
	blk, err := c.Blocks[0].Encode()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "block.json", blk)
	golden(t, "receipt.tlog-proof", c.Receipt(1, 3).Marshal())
	golden(t, "validator.pub", []byte(c.Verifier+"\n"))
}

func TestCanonicalTransaction(t *testing.T) {
	canon, _ := chaintest.Anchor(7).Encode()
	if _, err := chain.DecodeTransaction(canon); err != nil {
		t.Fatalf("canonical form refused: %v", err)
	}
	// The same content with another key order or spacing is refused by
	// the strict decoder, and accepted and canonicalised by the parser.
	spaced := bytes.Replace(canon, []byte(`,"type"`), []byte(`, "type"`), 1)
	if _, err := chain.DecodeTransaction(spaced); !errors.Is(err, chain.ErrNotCanonical) {
		t.Errorf("non-canonical accepted: %v", err)
	}
	tx, err := chain.ParseTransaction(spaced)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := tx.Encode()
	if !bytes.Equal(again, canon) || chain.TxID(again) != chain.TxID(canon) {
		t.Error("canonicalisation is not stable")
	}
	for name, in := range map[string]string{
		"unknown field": `{"type":"system","x":1}`,
		"trailing":      string(canon) + `{}`,
		"wrong type":    `{"type":1}`,
	} {
		if _, err := chain.ParseTransaction([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestValidateFieldErrors(t *testing.T) {
	tx := chaintest.Anchor(1)
	tx.Anchor.SessionID = "not-a-uuid"
	tx.Anchor.MerkleRoot = "ABC"
	tx.Anchor.EndedAt = "2026-11-26T08:00:00Z"
	err := tx.Validate()
	var fe chain.FieldErrors
	if !errors.As(err, &fe) {
		t.Fatalf("Validate = %v", err)
	}
	got := map[string]bool{}
	for _, e := range fe {
		got[e.Field] = true
	}
	for _, f := range []string{"anchor.session_id", "anchor.merkle_root", "anchor.ended_at"} {
		if !got[f] {
			t.Errorf("no error for %s in %v", f, fe)
		}
	}
}

// TestValidateNewBoundsTimes: a new anchor's time may be nanosecond
// precise and no more (time.Parse takes a fraction of any length, and the
// string would go on the chain as sent), while a sealed block holding a
// longer one still verifies: Validate, the rule for sealed blocks, keeps
// accepting it.
func TestValidateNewBoundsTimes(t *testing.T) {
	tx := chaintest.Anchor(1)
	tx.Anchor.StartedAt = "2026-11-26T09:00:00.123456789+01:00"
	if err := tx.ValidateNew(); err != nil {
		t.Fatalf("a nanosecond time with a zone: %v", err)
	}
	tx.Anchor.StartedAt = "2026-11-26T09:00:00." + strings.Repeat("0", 16000) + "Z"
	var fe chain.FieldErrors
	if err := tx.ValidateNew(); !errors.As(err, &fe) || len(fe) != 1 || fe[0].Field != "anchor.started_at" {
		t.Fatalf("a padded time: %v, want anchor.started_at refused", err)
	}
	if err := tx.Anchor.ValidateNew(); !errors.As(err, &fe) || len(fe) != 1 || fe[0].Field != "started_at" {
		t.Fatalf("a padded time, the anchor alone: %v, want started_at refused", err)
	}
	if err := tx.Validate(); err != nil {
		t.Fatalf("Validate, the sealed blocks' rule, refuses what it took before: %v", err)
	}
}

func TestVerifyBlockChain(t *testing.T) {
	c := fixture(t)
	tree, _ := logtree.New(logtree.MemoryStore{}, 0)
	var prev *chain.Header
	for _, b := range c.Blocks {
		h, err := chain.VerifyBlock(b, prev, chain.Origin(chaintest.ChainID), tree, c.Verifiers())
		if err != nil {
			t.Fatalf("block %d: %v", b.Height, err)
		}
		for _, lh := range b.LeafHashes() {
			if _, err := tree.AppendHash(lh); err != nil {
				t.Fatal(err)
			}
		}
		prev = h
	}
}

// TestTamperingIsDetected alters blocks and receipts in the ways an
// attacker or a bad disk would, and checks each is refused with a message
// that says what is wrong.
func TestTamperingIsDetected(t *testing.T) {
	c := fixture(t)
	verify := func(b *chain.Block, prev *chain.Header, n int) error {
		tree, _ := logtree.New(logtree.MemoryStore{}, 0)
		for _, bb := range c.Blocks[:n] {
			for _, lh := range bb.LeafHashes() {
				_, _ = tree.AppendHash(lh)
			}
		}
		_, err := chain.VerifyBlock(b, prev, chain.Origin(chaintest.ChainID), tree, c.Verifiers())
		return err
	}
	clone := func(b *chain.Block) *chain.Block {
		cp := *b
		cp.Transactions = append(cp.Transactions[:0:0], b.Transactions...)
		return &cp
	}

	// A transaction altered on disk.
	b := clone(c.Blocks[0])
	b.Transactions[1] = bytes.Replace(b.Transactions[1], []byte("operator@"), []byte("attacker@"), 1)
	if err := verify(b, nil, 0); err == nil || !strings.Contains(err.Error(), "root does not match the transactions") {
		t.Errorf("altered transaction: %v", err)
	}
	// A transaction dropped.
	b = clone(c.Blocks[0])
	b.Transactions = b.Transactions[:2]
	if err := verify(b, nil, 0); err == nil || !strings.Contains(err.Error(), "counts 4 transactions") {
		t.Errorf("dropped transaction: %v", err)
	}
	// The header text altered (signature no longer matches).
	b = clone(c.Blocks[1])
	b.Checkpoint = strings.Replace(b.Checkpoint, "txs 0", "txs 1", 1)
	if err := verify(b, c.Headers[0], 1); err == nil || !strings.Contains(err.Error(), "altered checkpoint") {
		t.Errorf("altered header: %v", err)
	}
	// A block from another chain (fork): signed correctly, wrong prev.
	other := chaintest.New()
	other.Append(chaintest.Anchor(9))
	other.Append()
	if err := verify(other.Blocks[1], c.Headers[0], 1); err == nil || !strings.Contains(err.Error(), "previous hash") {
		t.Errorf("forked block: %v", err)
	}
	// A block signed by a key that is not a validator.
	skey, _ := chaintest.Key("mallory", 9)
	mallory := chaintest.New()
	var err error
	if mallory.Signer, err = noteSigner(skey); err != nil {
		t.Fatal(err)
	}
	mallory.Append(chaintest.Anchor(1), chaintest.Anchor(2), chaintest.Anchor(3))
	if err := verify(mallory.Blocks[0], nil, 0); err == nil || !strings.Contains(err.Error(), "not signed by a known validator (signed by mallory") {
		t.Errorf("foreign signer: %v", err)
	}
}

func TestReceipts(t *testing.T) {
	c := fixture(t)
	for idx, height := range map[uint64]int{0: 1, 2: 1, 3: 3, 4: 3} {
		r := c.Receipt(idx, height)
		v, err := chain.VerifyReceipt(r.Marshal(), c.Verifiers(), "")
		if err != nil {
			t.Fatalf("receipt %d: %v", idx, err)
		}
		if v.Index != idx || v.Header.Height != uint64(height) {
			t.Errorf("verified %+v", v)
		}
	}
	good := c.Receipt(1, 3).Marshal()

	// One flipped byte anywhere in the receipt must be caught.
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x01
		if _, err := chain.VerifyReceipt(bad, c.Verifiers(), ""); err == nil {
			t.Fatalf("receipt with byte %d flipped (%q) verified", i, good[i])
		}
	}

	// A receipt whose checkpoint is signed by another key.
	other := chaintest.New()
	skey, _ := chaintest.Key("validator-1", 7) // same name, other key
	other.Signer, _ = noteSigner(skey)
	other.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	_, err := chain.VerifyReceipt(other.Receipt(1, 1).Marshal(), c.Verifiers(), "")
	if !errors.Is(err, chain.ErrSignature) {
		t.Errorf("receipt signed by another key: %v", err)
	}

	// A proof for another leaf.
	r := c.Receipt(1, 3)
	r.Index = 3
	if _, err := chain.VerifyReceipt(r.Marshal(), c.Verifiers(), ""); !errors.Is(err, chain.ErrInclusion) {
		t.Errorf("wrong index: %v", err)
	}
}

func TestConsistencyBetweenCheckpoints(t *testing.T) {
	c := fixture(t)
	h1, h3 := c.Headers[0], c.Headers[2]
	p, err := c.Tree.ConsistencyProof(h1.TreeSize, h3.TreeSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := logtree.VerifyConsistency(h1.TreeSize, h3.TreeSize, p, h1.Root, h3.Root); err != nil {
		t.Errorf("consistent checkpoints refused: %v", err)
	}
	if err := chain.CheckConsistency(h1, h3, p); err != nil {
		t.Errorf("CheckConsistency of good checkpoints: %v", err)
	}
	// A checkpoint from a rewritten history is not consistent.
	forked := chaintest.New()
	forked.Append(chaintest.Anchor(1), chaintest.Anchor(2), chaintest.Anchor(99))
	if forked.Headers[0].TreeSize != h1.TreeSize {
		t.Fatal("fixture sizes differ")
	}
	err = chain.CheckConsistency(forked.Headers[0], h3, p)
	if !errors.Is(err, chain.ErrInconsistent) || !strings.Contains(err.Error(), "history was rewritten") {
		t.Errorf("rewritten history: %v", err)
	}
	if err := chain.CheckConsistency(h3, h1, nil); err == nil || !strings.Contains(err.Error(), "the log shrank from 5 to 4") {
		t.Errorf("shrunk log: %v", err)
	}
}

// TestBlocksKeepTransactionBytes: characters that JSON encoders like to
// escape ('<', '>', '&', U+2028, control characters) survive a block's
// encoding byte for byte, so the block still verifies.
func TestBlocksKeepTransactionBytes(t *testing.T) {
	c := chaintest.New()
	tx := chaintest.Anchor(1)
	tx.Anchor.Owner = "Alice <alice@example.org> & co\u2028\u2029\x01\t\"q\""
	c.Append(tx)
	enc, err := c.Blocks[0].Encode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := chain.DecodeBlock(enc)
	if err != nil {
		t.Fatal(err)
	}
	a := chain.NewAuditor(chain.Origin(chaintest.ChainID), nil)
	if err := a.Next(b); err != nil {
		t.Fatalf("a block with escapable characters does not verify after encoding: %v", err)
	}
}

func TestReceiptFromAnotherChain(t *testing.T) {
	c := fixture(t)
	data := c.Receipt(1, 1).Marshal()
	if _, err := chain.VerifyReceipt(data, c.Verifiers(), chain.Origin("production")); err == nil || !strings.Contains(err.Error(), `not "lucid.chain/production"`) {
		t.Errorf("receipt of another chain: %v", err)
	}
	if _, err := chain.VerifyReceipt(data, c.Verifiers(), chain.Origin(chaintest.ChainID)); err != nil {
		t.Errorf("receipt of this chain: %v", err)
	}
}

// TestAnAuditHoldsOnlyTheBorder: auditing a chain keeps the transaction
// log's right border, not a node per transaction, so an audit anyone may
// ask of the block manager costs memory by the log's depth, not its size.
func TestAnAuditHoldsOnlyTheBorder(t *testing.T) {
	c := chaintest.New()
	for b := range 20 {
		txs := make([]*chain.Transaction, 5000)
		for i := range txs {
			txs[i] = chaintest.Anchor(b*5000 + i)
		}
		c.Append(txs...)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := chain.NewAuditor(chain.Origin(chaintest.ChainID), nil)
	for _, b := range c.Blocks {
		if err := a.Next(b); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(a)
	runtime.KeepAlive(c) // the chain built, and its own tree, stay what they were
	if a.Txs != 100_001 {
		t.Fatalf("audited %d transactions", a.Txs)
	}
	// A node per transaction would be over 10 MiB here.
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 1<<20 {
		t.Errorf("the audit of 100,001 transactions holds %d bytes", grown)
	}
}
