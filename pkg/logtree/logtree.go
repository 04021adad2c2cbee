// Package logtree is an append-only RFC 6962 Merkle tree (SHA-256, leaf hash
// H(0x00‖d), node hash H(0x01‖l‖r)) that can prove inclusion and
// consistency at any past size. The chain's transaction log and the data
// chain's per-session chunk trees both use it.
//
// The tree keeps every complete subtree hash in a NodeStore: 2n hashes for n
// leaves, any proof is O(log n) lookups, and appending is amortised O(1).
// Hashing and proof shapes come from github.com/transparency-dev/merkle.
package logtree

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// Hasher is the RFC 6962 SHA-256 hasher every Lucid tree uses.
var Hasher = rfc6962.DefaultHasher

var rangeFactory = compact.RangeFactory{Hash: Hasher.HashChildren}

// NodeStore keeps the hashes of complete subtrees.
type NodeStore interface {
	// Node returns the hash of the complete subtree id, or an error if it
	// is not stored.
	Node(id compact.NodeID) ([]byte, error)
	// SetNode stores the hash of the complete subtree id.
	SetNode(id compact.NodeID, hash []byte) error
}

// Tree is an append-only Merkle tree over a NodeStore. It is not safe for
// concurrent use; callers serialise appends and proofs.
type Tree struct {
	store NodeStore
	rng   *compact.Range
}

// New returns a tree of size leaves whose nodes are in store. For size > 0
// it reads the O(log n) nodes of the tree's right border from store.
func New(store NodeStore, size uint64) (*Tree, error) {
	ids := compact.RangeNodes(0, size, nil)
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := store.Node(id)
		if err != nil {
			return nil, fmt.Errorf("tree of size %d: node %d.%d: %w", size, id.Level, id.Index, err)
		}
		hashes[i] = h
	}
	rng, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	return &Tree{store: store, rng: rng}, nil
}

// Size returns the number of leaves.
func (t *Tree) Size() uint64 { return t.rng.End() }

// AppendLeaf appends data as a leaf and returns its index.
func (t *Tree) AppendLeaf(data []byte) (uint64, error) {
	return t.AppendHash(Hasher.HashLeaf(data))
}

// AppendHash appends a leaf whose leaf hash is already known.
func (t *Tree) AppendHash(leafHash []byte) (uint64, error) {
	idx := t.rng.End()
	var serr error
	err := t.rng.Append(leafHash, func(id compact.NodeID, hash []byte) {
		if serr == nil {
			serr = t.store.SetNode(id, hash)
		}
	})
	if err != nil {
		return 0, err
	}
	return idx, serr
}

// Root returns the root hash at the current size.
func (t *Tree) Root() ([]byte, error) {
	if t.rng.End() == 0 {
		return Hasher.EmptyRoot(), nil
	}
	return t.rng.GetRootHash(nil)
}

// ErrSize reports a proof asked for beyond the tree.
var ErrSize = errors.New("beyond the tree")

// InclusionProof proves that leaf index is in the tree of the given size.
func (t *Tree) InclusionProof(index, size uint64) ([][]byte, error) {
	if size > t.Size() || index >= size {
		return nil, fmt.Errorf("inclusion of %d in %d (tree size %d): %w", index, size, t.Size(), ErrSize)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes)
}

// ConsistencyProof proves that the tree of size1 is a prefix of the tree of
// size2.
func (t *Tree) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	if size2 > t.Size() || size1 > size2 {
		return nil, fmt.Errorf("consistency %d..%d (tree size %d): %w", size1, size2, t.Size(), ErrSize)
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return t.fetch(nodes)
}

// RootAt returns the root hash of the tree when it had size leaves.
func (t *Tree) RootAt(size uint64) ([]byte, error) {
	if size > t.Size() {
		return nil, fmt.Errorf("root at %d (tree size %d): %w", size, t.Size(), ErrSize)
	}
	if size == 0 {
		return Hasher.EmptyRoot(), nil
	}
	ids := compact.RangeNodes(0, size, nil)
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := t.store.Node(id)
		if err != nil {
			return nil, err
		}
		hashes[i] = h
	}
	r, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	return r.GetRootHash(nil)
}

func (t *Tree) fetch(nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		h, err := t.store.Node(id)
		if err != nil {
			return nil, fmt.Errorf("node %d.%d: %w", id.Level, id.Index, err)
		}
		hashes[i] = h
	}
	return nodes.Rehash(hashes, Hasher.HashChildren)
}

// ErrInclusion reports an inclusion proof that does not lead to the root.
var ErrInclusion = errors.New("inclusion proof does not match the root")

// VerifyInclusion checks that leafHash is at index in the tree of size with
// root (RFC 9162, section 2.1.3.2).
//
// It is the hot path of receipt checking and audits, so it hashes into a
// stack buffer and allocates nothing; a test holds it to the same answers
// as transparency-dev/merkle's verifier for every shape of tree.
func VerifyInclusion(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	if index >= size {
		return fmt.Errorf("%w: index %d is outside a tree of %d", ErrInclusion, index, size)
	}
	if len(leafHash) != sha256.Size || len(root) != sha256.Size {
		return fmt.Errorf("%w: hashes must be %d bytes", ErrInclusion, sha256.Size)
	}
	var buf [1 + 2*sha256.Size]byte
	buf[0] = 1 // RFC 6962 node prefix
	r := [sha256.Size]byte(leafHash)
	fn, sn := index, size-1
	for _, h := range p {
		if sn == 0 || len(h) != sha256.Size {
			return fmt.Errorf("%w: wrong proof length or hash size", ErrInclusion)
		}
		if fn&1 == 1 || fn == sn {
			copy(buf[1:], h)
			copy(buf[1+sha256.Size:], r[:])
			r = sha256.Sum256(buf[:])
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			copy(buf[1:], r[:])
			copy(buf[1+sha256.Size:], h)
			r = sha256.Sum256(buf[:])
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return fmt.Errorf("%w: proof too short for index %d in a tree of %d", ErrInclusion, index, size)
	}
	if !bytes.Equal(r[:], root) {
		return fmt.Errorf("%w: calculated root %x, expected %x", ErrInclusion, r, root)
	}
	return nil
}

// ErrRootMismatch marks a consistency proof that is well formed but leads
// to another root than the one it is checked against: the two trees hold
// different leaves. Any other failure says nothing of the trees (a proof
// cut short, or of the wrong size).
var ErrRootMismatch = errors.New("the proof leads to another root")

// VerifyConsistency checks that root1 (size1) is a prefix of root2 (size2).
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	err := proof.VerifyConsistency(Hasher, size1, size2, p, root1, root2)
	if _, ok := errors.AsType[proof.RootMismatchError](err); ok {
		return fmt.Errorf("%w: %w", ErrRootMismatch, err)
	}
	return err
}

// MemoryStore is a NodeStore in memory.
type MemoryStore map[compact.NodeID][]byte

var _ NodeStore = MemoryStore(nil)

// Node implements NodeStore.
func (m MemoryStore) Node(id compact.NodeID) ([]byte, error) {
	h, ok := m[id]
	if !ok {
		return nil, errors.New("no such node")
	}
	return h, nil
}

// SetNode implements NodeStore.
func (m MemoryStore) SetNode(id compact.NodeID, hash []byte) error {
	m[id] = hash
	return nil
}

// DiscardStore is a NodeStore that keeps nothing: for a tree that only
// appends and gives roots, such as an audit of a whole chain, which then
// holds O(log n) hashes instead of 2n. Proofs from it fail, and so does
// New with it at a size above 0.
type DiscardStore struct{}

var _ NodeStore = DiscardStore{}

// Node implements NodeStore: no node is kept.
func (DiscardStore) Node(compact.NodeID) ([]byte, error) {
	return nil, errors.New("no node is kept (DiscardStore)")
}

// SetNode implements NodeStore, keeping nothing.
func (DiscardStore) SetNode(compact.NodeID, []byte) error { return nil }

// NodeKey encodes id as a sortable 9-byte key for byte-keyed stores.
func NodeKey(id compact.NodeID) []byte {
	k := make([]byte, 9)
	k[0] = byte(id.Level)
	for i := 0; i < 8; i++ {
		k[1+i] = byte(id.Index >> (56 - 8*i))
	}
	return k
}

// RootWith returns the size and root the tree would have after appending
// leafHashes, without changing the tree or its store: how a block's claimed
// root is checked before the block is accepted.
func (t *Tree) RootWith(leafHashes [][]byte) (uint64, []byte, error) {
	r, err := rangeFactory.NewRange(0, t.rng.End(), append([][]byte(nil), t.rng.Hashes()...))
	if err != nil {
		return 0, nil, err
	}
	for _, h := range leafHashes {
		if err := r.Append(h, nil); err != nil {
			return 0, nil, err
		}
	}
	if r.End() == 0 {
		return 0, Hasher.EmptyRoot(), nil
	}
	root, err := r.GetRootHash(nil)
	return r.End(), root, err
}
