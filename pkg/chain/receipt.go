package chain

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/transparency-dev/formats/proof"
	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/logtree"
)

// Receipt proves offline that a transaction is in the chain: the
// transaction, its leaf index, an inclusion proof, and the signed checkpoint
// of the block that sealed it. Its encoding is the C2SP tlog-proof layout
// (c2sp.org/tlog-proof@v1) with the canonical transaction as "extra" data.
type Receipt struct {
	Tx         []byte
	Index      uint64
	Proof      [][]byte
	Checkpoint []byte
}

// ReceiptExt is the file extension C2SP recommends.
const ReceiptExt = ".tlog-proof"

// Marshal returns the tlog-proof encoding.
func (r *Receipt) Marshal() []byte {
	p := proof.TLogProof{Index: r.Index, Checkpoint: r.Checkpoint, ExtraData: r.Tx}
	for _, h := range r.Proof {
		p.Hashes = append(p.Hashes, [sha256.Size]byte(h))
	}
	return p.Marshal()
}

// ParseReceipt decodes a receipt strictly: it must re-encode to the same
// bytes.
func ParseReceipt(data []byte) (*Receipt, error) {
	var p proof.TLogProof
	if err := p.Unmarshal(data); err != nil {
		return nil, fmt.Errorf("receipt: %w", err)
	}
	if len(p.ExtraData) == 0 {
		return nil, errors.New("receipt: no transaction (the extra line is missing)")
	}
	r := &Receipt{Tx: p.ExtraData, Index: p.Index, Checkpoint: p.Checkpoint}
	for _, h := range p.Hashes {
		r.Proof = append(r.Proof, bytes.Clone(h[:]))
	}
	if !bytes.Equal(r.Marshal(), data) {
		return nil, errors.New("receipt: not in canonical form")
	}
	return r, nil
}

// VerifiedReceipt is what a receipt proves.
type VerifiedReceipt struct {
	TxID   string
	Tx     *Transaction
	Index  uint64
	Header *Header
}

// Errors of VerifyReceipt, for callers that map them to exit codes.
var (
	ErrInclusion = errors.New("inclusion proof does not lead to the checkpoint's root")
)

// VerifyReceipt checks a receipt against the validators' public keys: the
// checkpoint's signature, the chain (origin, unless empty), the
// transaction's form, and the inclusion proof.
func VerifyReceipt(data []byte, validators note.Verifiers, origin string) (*VerifiedReceipt, error) {
	r, err := ParseReceipt(data)
	if err != nil {
		return nil, err
	}
	h, err := OpenHeader(r.Checkpoint, validators)
	if err != nil {
		return nil, err
	}
	return r.verifyUnder(h, origin)
}

// ErrNotInChain reports a receipt whose checkpoint is not the chain's own
// block at its height.
var ErrNotInChain = errors.New("the receipt's checkpoint is not this chain's block at its height")

// ReceiptHeight is the height a receipt's checkpoint names, read without
// checking its signature: which block of a chain to hold it against
// (VerifyReceiptInChain).
func ReceiptHeight(data []byte) (uint64, error) {
	r, err := ParseReceipt(data)
	if err != nil {
		return 0, err
	}
	h, err := (&Block{Checkpoint: string(r.Checkpoint)}).Header()
	if err != nil {
		return 0, fmt.Errorf("receipt checkpoint: %w", err)
	}
	return h.Height, nil
}

// VerifyReceiptInChain checks a receipt against stored, the block a chain
// holds at the receipt's height: the receipt's checkpoint must be that
// block's, byte for byte, and the chain, the transaction and the inclusion
// proof are checked as VerifyReceipt does. The signature is not checked
// again: the chain checked it when it stored the block, against the
// validators of that time, one of whom may have been removed since; its
// receipts stay good.
func VerifyReceiptInChain(data []byte, stored *Block, origin string) (*VerifiedReceipt, error) {
	if stored == nil {
		return nil, ErrNotInChain
	}
	return VerifyReceiptAtCheckpoint(data, []byte(stored.Checkpoint), origin)
}

// VerifyReceiptAtCheckpoint is VerifyReceiptInChain with only the stored
// block's signed checkpoint, which is all it reads of the block.
func VerifyReceiptAtCheckpoint(data, checkpoint []byte, origin string) (*VerifiedReceipt, error) {
	r, err := ParseReceipt(data)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(r.Checkpoint, checkpoint) {
		return nil, ErrNotInChain
	}
	h, err := (&Block{Checkpoint: string(checkpoint)}).Header()
	if err != nil {
		return nil, err
	}
	return r.verifyUnder(h, origin)
}

// verifyUnder checks what a receipt proves under its checkpoint's header
// h, once h is known to be the chain's.
func (r *Receipt) verifyUnder(h *Header, origin string) (*VerifiedReceipt, error) {
	if origin != "" && h.Origin != origin {
		return nil, fmt.Errorf("receipt is from chain %q, not %q", h.Origin, origin)
	}
	tx, err := DecodeTransaction(r.Tx)
	if err != nil {
		return nil, fmt.Errorf("receipt transaction: %w", err)
	}
	if err := tx.Validate(); err != nil {
		return nil, fmt.Errorf("receipt transaction: %w", err)
	}
	if r.Index >= h.TreeSize {
		return nil, fmt.Errorf("receipt index %d is outside the checkpoint's tree of %d", r.Index, h.TreeSize)
	}
	if err := logtree.VerifyInclusion(r.Index, h.TreeSize, logtree.Hasher.HashLeaf(r.Tx), r.Proof, h.Root); err != nil {
		return nil, fmt.Errorf("%w: the transaction, index or proof was altered (%w)", ErrInclusion, err)
	}
	return &VerifiedReceipt{TxID: TxID(r.Tx), Tx: tx, Index: r.Index, Header: h}, nil
}
