package chain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/logtree"
)

// Block is a signed header and the transactions it seals, as stored,
// streamed and served.
type Block struct {
	Height uint64 `json:"height"`
	Hash   string `json:"hash"`
	// Checkpoint is the signed note of the header.
	Checkpoint string `json:"checkpoint"`
	// Transactions are canonical transactions, in log order.
	Transactions []json.RawMessage `json:"transactions"`
}

// Encode returns the block's JSON form. HTML escaping is off: it would
// rewrite '<', '>' and '&' inside the canonical transactions, and a block
// must carry their exact bytes.
func (b *Block) Encode() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(b); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// DecodeBlock parses a block strictly: unknown fields and trailing data
// are refused, and the block must be in the form Encode gives (surrounding
// white space aside), so its transactions are exactly the bytes that were
// sealed.
func DecodeBlock(data []byte) (*Block, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var b Block
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("block: %w", err)
	}
	if dec.More() {
		return nil, errors.New("block: trailing data")
	}
	enc, err := b.Encode()
	if err != nil {
		return nil, fmt.Errorf("block: %w", err)
	}
	if !bytes.Equal(enc, bytes.TrimSpace(data)) {
		return nil, errors.New("block: not in canonical form")
	}
	return &b, nil
}

// LeafHashes returns the log leaf hashes of the block's transactions.
func (b *Block) LeafHashes() [][]byte {
	out := make([][]byte, len(b.Transactions))
	for i, tx := range b.Transactions {
		out[i] = logtree.Hasher.HashLeaf(tx)
	}
	return out
}

// BlockError reports a block that must not be accepted, and why.
type BlockError struct {
	Height uint64
	Reason string
}

func (e *BlockError) Error() string { return fmt.Sprintf("block %d rejected: %s", e.Height, e.Reason) }

// VerifyBlock checks b independently as the block after prev (nil for the
// first block) on a chain whose log before b is tree: the signature by a
// known validator, the hash link and height, the time, every transaction,
// and that appending the transactions to the log gives exactly the size and
// root the header claims (which also proves the new checkpoint consistent
// with the previous one). It does not change tree.
func VerifyBlock(b *Block, prev *Header, origin string, tree *logtree.Tree, validators note.Verifiers) (*Header, error) {
	h, _, err := VerifyBlockTxs(b, prev, origin, tree, validators)
	return h, err
}

// VerifyBlockTxs is VerifyBlock that also returns the block's decoded
// transactions, so a caller that stores or indexes them does not decode
// them a second time.
func VerifyBlockTxs(b *Block, prev *Header, origin string, tree *logtree.Tree, validators note.Verifiers) (*Header, []*Transaction, error) {
	reject := func(format string, args ...any) (*Header, []*Transaction, error) {
		return nil, nil, &BlockError{Height: b.Height, Reason: fmt.Sprintf(format, args...)}
	}
	h, err := OpenHeader([]byte(b.Checkpoint), validators)
	if err != nil {
		return reject("%v", err)
	}
	if h.Origin != origin {
		return reject("origin %q, want %q", h.Origin, origin)
	}
	if h.Height != b.Height {
		return reject("header height %d differs from the block's %d", h.Height, b.Height)
	}
	if hash := h.Hash(); hash != b.Hash {
		return reject("hash %s does not match the header (%s)", b.Hash, hash)
	}
	wantPrev, wantHeight := ZeroHash, uint64(1)
	if prev != nil {
		wantPrev, wantHeight = prev.Hash(), prev.Height+1
		if !h.Time.After(prev.Time) {
			return reject("time %s is not after the previous block's %s", h.Time, prev.Time)
		}
	}
	if h.Height != wantHeight {
		return reject("height %d, want %d", h.Height, wantHeight)
	}
	if h.Prev != wantPrev {
		return reject("previous hash %s, want %s (the chain is forked or altered)", h.Prev, wantPrev)
	}
	if h.TxCount != len(b.Transactions) {
		return reject("header counts %d transactions, the block has %d", h.TxCount, len(b.Transactions))
	}
	txs := make([]*Transaction, len(b.Transactions))
	for i, raw := range b.Transactions {
		tx, err := DecodeTransaction(raw)
		if err != nil {
			return reject("transaction %d: %v", i, err)
		}
		if err := tx.Validate(); err != nil {
			return reject("transaction %d: %v", i, err)
		}
		txs[i] = tx
	}
	leaves := b.LeafHashes()
	// A transaction is sealed once: twice in a block, its location would
	// be the later copy's.
	seen := make(map[string]int, len(leaves))
	for i, lh := range leaves {
		if j, ok := seen[string(lh)]; ok {
			return reject("transaction %d repeats transaction %d", i, j)
		}
		seen[string(lh)] = i
	}
	size, root, err := tree.RootWith(leaves)
	if err != nil {
		return reject("recompute root: %v", err)
	}
	if size != h.TreeSize {
		return reject("tree size %d, but the log would have %d", h.TreeSize, size)
	}
	if !bytes.Equal(root, h.Root) {
		return reject("root does not match the transactions (recomputed %x, header %x)", root, h.Root)
	}
	return h, txs, nil
}

// Header parses the block's header from its checkpoint without checking
// the signature: for code that reads blocks a verifier already accepted.
func (b *Block) Header() (*Header, error) {
	text := b.Checkpoint
	if i := strings.Index(text, "\n\n"); i >= 0 {
		text = text[:i+1]
	}
	return ParseHeaderBody([]byte(text))
}
