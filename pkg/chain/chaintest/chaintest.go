// Package chaintest builds small, deterministic chains for tests: a fixed
// validator key, blocks signed and linked the way the engine makes them, and
// receipts for their transactions.
package chaintest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/logtree"
)

// ChainID of fixture chains.
const ChainID = "test"

// Chain is an in-memory chain with one validator.
type Chain struct {
	Signer   note.Signer
	Verifier string
	Blocks   []*chain.Block
	Headers  []*chain.Header
	Tree     *logtree.Tree
	Start    time.Time
}

// Key returns a deterministic validator key pair for seed.
func Key(name string, seed byte) (skey, vkey string) {
	skey, vkey, err := note.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)), name)
	if err != nil {
		panic(err)
	}
	return skey, vkey
}

// New returns an empty chain signed by a deterministic key.
func New() *Chain {
	skey, vkey := Key("validator-1", 1)
	signer, err := note.NewSigner(skey)
	if err != nil {
		panic(err)
	}
	tree, _ := logtree.New(logtree.MemoryStore{}, 0)
	return &Chain{Signer: signer, Verifier: vkey, Tree: tree, Start: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
}

// Verifiers returns the chain's validator set.
func (c *Chain) Verifiers() note.Verifiers {
	v, err := chain.Verifiers([]string{c.Verifier})
	if err != nil {
		panic(err)
	}
	return v
}

// Anchor returns a valid anchor transaction for session number i.
func Anchor(i int) *chain.Transaction {
	sum := sha256.Sum256([]byte(fmt.Sprint("manifest-", i)))
	root := sha256.Sum256([]byte(fmt.Sprint("root-", i)))
	return &chain.Transaction{
		Type: chain.TypeSessionAnchor,
		Anchor: &chain.SessionAnchor{
			SessionID:    fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
			Owner:        "operator@example.org",
			ManifestHash: hex.EncodeToString(sum[:]),
			MerkleRoot:   hex.EncodeToString(root[:]),
			ChunkCount:   int64(i%100 + 1),
			StartedAt:    "2026-11-26T09:00:00Z",
			EndedAt:      "2026-11-26T09:30:00Z",
		},
	}
}

// AddValidator returns the system transaction that adds vkey.
func AddValidator(vkey string) *chain.Transaction {
	return &chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionAddValidator, Key: vkey, Node: "node-1"}}
}

// HandOver makes a new validator named name (key seed seed) take over
// from the chain's: a block the current validator signs adds the new key,
// and a block the new one signs removes the old key, which the chain then
// knows as removed. It returns the removed key.
func (c *Chain) HandOver(name string, seed byte) (removed string) {
	skey, vkey := Key(name, seed)
	signer, err := note.NewSigner(skey)
	if err != nil {
		panic(err)
	}
	c.Append(AddValidator(vkey))
	removed = c.Verifier
	c.Signer, c.Verifier = signer, vkey
	c.Append(&chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionRemoveValidator, Key: removed}})
	return removed
}

// HandedOver returns a chain of four blocks whose first validator, A, was
// removed: block 1 by A holds anchor 1 (at index 1), block 2 by A adds a
// validator B (key seed 2), block 3 by B removes A, and block 4 by B holds
// anchor 2 (at index 4). It returns A's key, removed.
func HandedOver() (c *Chain, removed string) {
	c = New()
	c.Append(Anchor(1))
	removed = c.HandOver("validator-2", 2)
	c.Append(Anchor(2))
	return c, removed
}

// Append seals txs into the next block, one second after the previous. The
// first block starts with the system transaction that makes the chain's key
// its validator, as the engine's genesis block does.
func (c *Chain) Append(txs ...*chain.Transaction) *chain.Block {
	if len(c.Blocks) == 0 {
		txs = append([]*chain.Transaction{AddValidator(c.Verifier)}, txs...)
	}
	var raws []json.RawMessage
	for _, tx := range txs {
		b, err := tx.Encode()
		if err != nil {
			panic(err)
		}
		raws = append(raws, b)
	}
	return c.AppendRaw(raws)
}

// AppendRaw seals canonical transactions into the next block.
func (c *Chain) AppendRaw(raws []json.RawMessage) *chain.Block {
	for _, raw := range raws {
		if _, err := c.Tree.AppendLeaf(raw); err != nil {
			panic(err)
		}
	}
	root, _ := c.Tree.Root()
	h := &chain.Header{
		Origin:   chain.Origin(ChainID),
		TreeSize: c.Tree.Size(),
		Root:     root,
		Height:   uint64(len(c.Blocks) + 1),
		Prev:     chain.ZeroHash,
		Time:     c.Start.Add(time.Duration(len(c.Blocks)+1) * time.Second),
		TxCount:  len(raws),
		Proposer: c.Signer.Name(),
	}
	if n := len(c.Headers); n > 0 {
		h.Prev = c.Headers[n-1].Hash()
	}
	signed, err := chain.SignHeader(h, c.Signer)
	if err != nil {
		panic(err)
	}
	if raws == nil {
		raws = []json.RawMessage{}
	}
	b := &chain.Block{Height: h.Height, Hash: h.Hash(), Checkpoint: string(signed), Transactions: raws}
	c.Blocks = append(c.Blocks, b)
	c.Headers = append(c.Headers, h)
	return b
}

// Receipt returns the receipt of leaf index as of block height.
func (c *Chain) Receipt(index uint64, height int) *chain.Receipt {
	h := c.Headers[height-1]
	p, err := c.Tree.InclusionProof(index, h.TreeSize)
	if err != nil {
		panic(err)
	}
	var tx []byte // the leaf's transaction, from the block that holds it
	for hi := height; hi >= 1; hi-- {
		hh := c.Headers[hi-1]
		f := hh.TreeSize - uint64(hh.TxCount)
		if index >= f && index < hh.TreeSize {
			tx = c.Blocks[hi-1].Transactions[index-f]
			break
		}
	}
	return &chain.Receipt{Tx: tx, Index: index, Proof: p, Checkpoint: []byte(c.Blocks[height-1].Checkpoint)}
}

// EngineAPI serves the chain's reads as the engine's API does: its info
// (GET /api/v1/chain, naming validators as the chain's current ones) and
// its blocks by height (GET /api/v1/blocks/N, 404 past the head).
func (c *Chain) EngineAPI(validators ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/chain" {
			_ = json.NewEncoder(w).Encode(engineapi.ChainInfo{ChainID: ChainID, Origin: chain.Origin(ChainID), Height: uint64(len(c.Blocks)), Validators: validators})
			return
		}
		for _, b := range c.Blocks {
			if r.URL.Path == "/api/v1/blocks/"+strconv.FormatUint(b.Height, 10) {
				enc, _ := b.Encode()
				_, _ = w.Write(enc)
				return
			}
			if r.URL.Path == "/api/v1/blocks/checkpoint/"+strconv.FormatUint(b.Height, 10) {
				_, _ = w.Write([]byte(b.Checkpoint))
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no such block"}}`))
	})
}
