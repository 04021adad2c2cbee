package chain

import (
	"errors"
	"fmt"
	"slices"

	"github.com/pickme/lucid/pkg/logtree"
)

// GenesisValidators returns the validator keys the first block adds: the
// first block is accepted when signed by a validator it adds itself, and
// everything after is checked against the set that grows from there.
func GenesisValidators(b *Block) []string {
	var txs []*Transaction
	for _, raw := range b.Transactions {
		if tx, err := DecodeTransaction(raw); err == nil {
			txs = append(txs, tx)
		}
	}
	return ApplyValidatorChanges(nil, txs)
}

// ApplyValidatorChanges returns the validator set after a block's system
// transactions (as VerifyBlockTxs returns them).
func ApplyValidatorChanges(validators []string, txs []*Transaction) []string {
	out := slices.Clone(validators)
	for _, tx := range txs {
		if tx.Type != TypeSystem {
			continue
		}
		switch tx.System.Action {
		case ActionAddValidator:
			if !slices.Contains(out, tx.System.Key) {
				out = append(out, tx.System.Key)
			}
		case ActionRemoveValidator:
			out = slices.DeleteFunc(out, func(k string) bool { return k == tx.System.Key })
		}
	}
	return out
}

// Auditor re-verifies a chain block by block from its first block, in
// memory: what `lucidctl verify chain` and the block manager's audit run.
// It keeps only the transaction log's right border (O(log n) hashes):
// verifying a block needs its root, never a proof, so an audit of a chain
// of millions of transactions holds kilobytes, not hundreds of megabytes.
type Auditor struct {
	origin     string
	validators []string
	pinned     bool
	tree       *logtree.Tree
	head       *Header
	Txs        uint64
}

// NewAuditor audits the chain with origin. If validators is non-empty the
// first block must be signed by one of them; otherwise the first block's
// own validators are trusted.
func NewAuditor(origin string, validators []string) *Auditor {
	t, _ := logtree.New(logtree.DiscardStore{}, 0)
	return &Auditor{origin: origin, validators: validators, pinned: len(validators) > 0, tree: t}
}

// Head returns the last verified header.
func (a *Auditor) Head() *Header { return a.head }

// Next verifies b as the next block.
func (a *Auditor) Next(b *Block) error {
	keys := a.validators
	if a.head == nil && !a.pinned {
		keys = GenesisValidators(b)
	}
	vs, err := Verifiers(keys)
	if err != nil {
		return err
	}
	h, txs, err := VerifyBlockTxs(b, a.head, a.origin, a.tree, vs)
	if err != nil {
		return err
	}
	for _, lh := range b.LeafHashes() {
		if _, err := a.tree.AppendHash(lh); err != nil {
			return err
		}
	}
	a.validators = ApplyValidatorChanges(a.validators, txs)
	a.head = h
	a.Txs += uint64(len(b.Transactions))
	return nil
}

// ErrInconsistent reports two checkpoints of one chain that cannot both be
// true: the later log does not extend the earlier one.
var ErrInconsistent = errors.New("checkpoints are not consistent")

// CheckConsistency checks that the log committed to by newer extends the
// log committed to by older, with a consistency proof between their sizes
// (from the engine's /api/v1/consistency). Both headers should come from
// OpenHeader, so that their signatures are already checked.
func CheckConsistency(older, newer *Header, p [][]byte) error {
	if older.Origin != newer.Origin {
		return fmt.Errorf("%w: different chains (%s, %s)", ErrInconsistent, older.Origin, newer.Origin)
	}
	if older.TreeSize > newer.TreeSize {
		return fmt.Errorf("%w: the log shrank from %d to %d entries", ErrInconsistent, older.TreeSize, newer.TreeSize)
	}
	if older.Height == newer.Height && older.Hash() != newer.Hash() {
		return fmt.Errorf("%w: two different blocks at height %d (%s, %s)", ErrInconsistent, older.Height, older.Hash(), newer.Hash())
	}
	if err := logtree.VerifyConsistency(older.TreeSize, newer.TreeSize, p, older.Root, newer.Root); err != nil {
		return fmt.Errorf("%w: the log at size %d (block %d) is not a prefix of the log at size %d (block %d): history was rewritten (%w)",
			ErrInconsistent, older.TreeSize, older.Height, newer.TreeSize, newer.Height, err)
	}
	return nil
}
