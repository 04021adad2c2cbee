// Package chainstore keeps a verified copy of the chain in bbolt: blocks by
// height and hash, every transaction's position, the Merkle log's nodes, and
// the validator set. The engine keeps the authoritative copy in one; the
// block manager keeps its independently verified index in another.
//
// Append accepts only a block that chain.VerifyBlock accepts as the next
// one, and commits it in one bbolt transaction, fsynced before Append
// returns: a block a caller announces is on disk.
package chainstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/transparency-dev/merkle/compact"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/logtree"
)

var (
	bucketMeta     = []byte("meta")
	bucketBlocks   = []byte("blocks")  // height → block JSON
	bucketHashes   = []byte("hashes")  // block hash → height
	bucketTxs      = []byte("txs")     // tx id → height(8) ‖ leaf index(8) ‖ canonical tx
	bucketHeaders  = []byte("headers") // height → signed checkpoint
	bucketNodes    = []byte("nodes")   // logtree node key → hash
	bucketSessions = []byte("anchors") // owner ‖ 0 ‖ session id → tx id
	// bucketOldSessions (session id → tx id) is the index of stores from
	// before sessions were per owner; Open rebuilds it as bucketSessions.
	bucketOldSessions = []byte("sessions")
	keyHeight         = []byte("height")
	keyValidators     = []byte("validators")
)

// ErrNotFound reports a block or transaction the store does not have.
var ErrNotFound = errors.New("not found")

// Store is a chain on disk. It is safe for concurrent use.
type Store struct {
	db     *bolt.DB
	origin string

	mu         sync.RWMutex
	head       *chain.Header // nil before the first block
	tree       *logtree.Tree
	validators []string
	changed    chan struct{} // closed and replaced when a block is added
}

// Open opens (or creates) the store at path for the chain with origin.
func Open(path, origin string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open chain store %s: %w", path, err)
	}
	s := &Store{db: db, origin: origin, changed: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		rebuild := tx.Bucket(bucketSessions) == nil && tx.Bucket(bucketTxs) != nil
		for _, b := range [][]byte{bucketMeta, bucketBlocks, bucketHashes, bucketTxs, bucketHeaders, bucketNodes, bucketSessions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if rebuild {
			if err := reindexAnchors(tx); err != nil {
				return err
			}
		}
		return fillCheckpoints(tx)
	})
	if err == nil {
		err = s.load()
	}
	if err != nil {
		_ = db.Close() // the open error is the one to report
		return nil, fmt.Errorf("open chain store %s: %w", path, err)
	}
	return s, nil
}

// fillCheckpoints stores the checkpoint of every block that has none: a
// store written before checkpoints were kept beside the blocks. Once.
func fillCheckpoints(tx *bolt.Tx) error {
	blocks, headers := tx.Bucket(bucketBlocks), tx.Bucket(bucketHeaders)
	if headers.Stats().KeyN >= blocks.Stats().KeyN {
		return nil
	}
	return blocks.ForEach(func(k, v []byte) error {
		if headers.Get(k) != nil {
			return nil
		}
		b, err := chain.DecodeBlock(v)
		if err != nil {
			return fmt.Errorf("block %d: %w", binary.BigEndian.Uint64(k), err)
		}
		return headers.Put(bytes.Clone(k), []byte(b.Checkpoint))
	})
}

// Close closes the store.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) load() error {
	return s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keyValidators); v != nil {
			if err := json.Unmarshal(v, &s.validators); err != nil {
				return fmt.Errorf("validators: %w", err)
			}
		}
		var size uint64
		if v := meta.Get(keyHeight); v != nil {
			b, err := decodeBlock(tx.Bucket(bucketBlocks).Get(v))
			if err != nil {
				return err
			}
			h, err := b.Header()
			if err != nil {
				return fmt.Errorf("head block: %w", err)
			}
			s.head, size = h, h.TreeSize
		}
		t, err := logtree.New(boltNodes{s.db}, size)
		if err != nil {
			return fmt.Errorf("log tree: %w", err)
		}
		if s.head != nil {
			// bbolt checks no data page: a flipped bit in a stored node
			// would give every next block a root no other node accepts,
			// signed all the same.
			if err := sameRoot(t, s.head); err != nil {
				return err
			}
		}
		s.tree = t
		return nil
	})
}

// ErrDamaged is a chain store whose log tree does not give the root its
// blocks say: a stored node is damaged.
var ErrDamaged = errors.New("the chain store is damaged")

// sameRoot checks that t, the log tree at h's size, has h's root.
func sameRoot(t *logtree.Tree, h *chain.Header) error {
	root, err := t.Root()
	if err != nil {
		return fmt.Errorf("log tree: %w", err)
	}
	if !bytes.Equal(root, h.Root) {
		return fmt.Errorf("%w: its log tree's root over %d transactions is %x, but block %d says %x: a stored tree node is damaged (restore the engine's data from a backup, or give this node an empty data directory to catch up from the cluster)",
			ErrDamaged, h.TreeSize, root, h.Height, h.Root)
	}
	return nil
}

// anchorKey indexes the anchor of an owner's session: sessions are per
// owner, as in the data chain.
func anchorKey(owner, sessionID string) []byte {
	return []byte(owner + "\x00" + sessionID)
}

// reindexAnchors builds the owner-and-session index from the stored
// transactions, keeping each session's first anchor, as storing the
// blocks one by one would have; the index it replaces goes.
func reindexAnchors(tx *bolt.Tx) error {
	type first struct {
		id    string
		index uint64
	}
	firsts := map[string]first{}
	err := tx.Bucket(bucketTxs).ForEach(func(k, v []byte) error {
		if len(v) < 16 {
			return fmt.Errorf("transaction %s: short record", k)
		}
		t, err := chain.ParseTransaction(v[16:])
		if err != nil {
			return fmt.Errorf("transaction %s: %w", k, err)
		}
		if t.Anchor == nil {
			return nil
		}
		key, idx := string(anchorKey(t.Anchor.Owner, t.Anchor.SessionID)), binary.BigEndian.Uint64(v[8:16])
		if f, ok := firsts[key]; !ok || idx < f.index {
			firsts[key] = first{string(k), idx}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reindex anchors: %w", err)
	}
	b := tx.Bucket(bucketSessions)
	for key, f := range firsts {
		if err := b.Put([]byte(key), []byte(f.id)); err != nil {
			return err
		}
	}
	if tx.Bucket(bucketOldSessions) != nil {
		return tx.DeleteBucket(bucketOldSessions)
	}
	return nil
}

func decodeBlock(v []byte) (*chain.Block, error) {
	if v == nil {
		return nil, ErrNotFound
	}
	return chain.DecodeBlock(v)
}

func u64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// Head returns the newest block's header, or nil for an empty chain.
func (s *Store) Head() *chain.Header {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.head
}

// Height returns the newest block's height (0 for an empty chain).
func (s *Store) Height() uint64 {
	if h := s.Head(); h != nil {
		return h.Height
	}
	return 0
}

// Validators returns the validator set's public keys.
func (s *Store) Validators() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.validators)
}

// Changed returns a channel closed when the next block is added.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// Verify checks b as the next block without storing it. The first block
// may be signed by the validator it adds (the genesis key); after that only
// the recorded validators count.
func (s *Store) Verify(b *chain.Block) (*chain.Header, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h, _, err := s.verifyLocked(b)
	return h, err
}

func (s *Store) verifyLocked(b *chain.Block) (*chain.Header, []*chain.Transaction, error) {
	keys := s.validators
	if s.head == nil && len(keys) == 0 {
		keys = chain.GenesisValidators(b)
	}
	vs, err := chain.Verifiers(keys)
	if err != nil {
		return nil, nil, err
	}
	h, txs, err := chain.VerifyBlockTxs(b, s.head, s.origin, s.tree, vs)
	if err != nil {
		return nil, nil, err
	}
	// Nor is a transaction sealed again in a later block: its receipt and
	// location would move to the copy.
	err = s.db.View(func(tx *bolt.Tx) error {
		sealed := tx.Bucket(bucketTxs)
		for i, raw := range b.Transactions {
			if id := chain.TxID(raw); sealed.Get([]byte(id)) != nil {
				return &chain.BlockError{Height: b.Height, Reason: fmt.Sprintf("transaction %d (%s) is sealed already", i, id)}
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return h, txs, nil
}

// Append verifies b as the next block and stores it durably. A block at a
// height already stored is accepted again only if it is the same block
// (raft replays entries after a restart); any other is refused.
func (s *Store) Append(b *chain.Block) (*chain.Header, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.head != nil && b.Height <= s.head.Height {
		have, err := s.block(b.Height)
		if err != nil {
			return nil, err
		}
		if have.Hash != b.Hash {
			return nil, &chain.BlockError{Height: b.Height, Reason: fmt.Sprintf("a different block (%s) is already stored at this height", have.Hash)}
		}
		return have.Header()
	}
	h, txs, err := s.verifyLocked(b)
	if err != nil {
		return nil, err
	}
	validators := chain.ApplyValidatorChanges(s.validators, txs)
	enc, err := b.Encode()
	if err != nil {
		return nil, err
	}
	first := h.TreeSize - uint64(len(b.Transactions))
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketBlocks).Put(u64(b.Height), enc); err != nil {
			return err
		}
		if err := tx.Bucket(bucketHashes).Put([]byte(b.Hash), u64(b.Height)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketHeaders).Put(u64(b.Height), []byte(b.Checkpoint)); err != nil {
			return err
		}
		txBucket, sessions := tx.Bucket(bucketTxs), tx.Bucket(bucketSessions)
		for i, raw := range b.Transactions {
			id := chain.TxID(raw)
			val := append(append(u64(b.Height), u64(first+uint64(i))...), raw...)
			if err := txBucket.Put([]byte(id), val); err != nil {
				return err
			}
			// The first anchor of a session is the session's anchor.
			if t := txs[i]; t.Anchor != nil {
				if k := anchorKey(t.Anchor.Owner, t.Anchor.SessionID); sessions.Get(k) == nil {
					if err := sessions.Put(k, []byte(id)); err != nil {
						return err
					}
				}
			}
		}
		tree, err := logtree.New(txNodes{tx.Bucket(bucketNodes)}, first)
		if err != nil {
			return err
		}
		for _, lh := range b.LeafHashes() {
			if _, err := tree.AppendHash(lh); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		vj, _ := json.Marshal(validators)
		if err := meta.Put(keyValidators, vj); err != nil {
			return err
		}
		return meta.Put(keyHeight, u64(b.Height))
	})
	if err != nil {
		return nil, fmt.Errorf("store block %d: %w", b.Height, err)
	}
	t, err := logtree.New(boltNodes{s.db}, h.TreeSize)
	if err != nil {
		return nil, err
	}
	s.head, s.tree, s.validators = h, t, validators
	close(s.changed)
	s.changed = make(chan struct{})
	return h, nil
}

// Block returns the block at height.
func (s *Store) Block(height uint64) (*chain.Block, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.block(height)
}

func (s *Store) block(height uint64) (*chain.Block, error) {
	var b *chain.Block
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		b, err = decodeBlock(tx.Bucket(bucketBlocks).Get(u64(height)))
		return err
	})
	return b, err
}

// RawBlock returns the stored encoding of the block at height: canonical
// JSON, verified when it was stored, for a server to send as it is rather
// than decode and encode again (a block is up to 32 MiB).
func (s *Store) RawBlock(height uint64) ([]byte, error) {
	return s.stored(bucketBlocks, u64(height))
}

// HeightOf returns the height of the block with hash.
func (s *Store) HeightOf(hash string) (uint64, error) {
	v, err := s.stored(bucketHashes, []byte(hash))
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(v), nil
}

// Checkpoint returns the signed checkpoint of the block at height: what a
// receipt of it carries, and its header, without the block.
func (s *Store) Checkpoint(height uint64) ([]byte, error) {
	return s.stored(bucketHeaders, u64(height))
}

// stored returns a copy of key's value in bucket, or ErrNotFound.
func (s *Store) stored(bucket, key []byte) ([]byte, error) {
	var v []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v = tx.Bucket(bucket).Get(key); v == nil {
			return ErrNotFound
		}
		v = bytes.Clone(v)
		return nil
	})
	return v, err
}

// Headers calls fn with the header of each block from height from
// (inclusive) up to to (inclusive), in order, until fn returns an error.
// It reads the checkpoints, never the blocks.
func (s *Store) Headers(from, to uint64, fn func(*chain.Header) error) error {
	var cps [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHeaders).Cursor()
		want := from
		for k, v := c.Seek(u64(from)); k != nil && binary.BigEndian.Uint64(k) <= to; k, v = c.Next() {
			if got := binary.BigEndian.Uint64(k); got != want {
				return fmt.Errorf("checkpoint of block %d: %w", want, ErrNotFound)
			}
			cps = append(cps, bytes.Clone(v))
			want++
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, cp := range cps {
		h, err := (&chain.Block{Checkpoint: string(cp)}).Header()
		if err != nil {
			return err
		}
		if err := fn(h); err != nil {
			return err
		}
	}
	return nil
}

// BlockByHash returns the block with hash.
func (s *Store) BlockByHash(hash string) (*chain.Block, error) {
	height, err := s.HeightOf(hash)
	if err != nil {
		return nil, err
	}
	return s.Block(height)
}

// Blocks calls fn for each block from height from (inclusive) up to to
// (inclusive), in order, until fn returns an error.
func (s *Store) Blocks(from, to uint64, fn func(raw []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBlocks).Cursor()
		for k, v := c.Seek(u64(from)); k != nil && binary.BigEndian.Uint64(k) <= to; k, v = c.Next() {
			if err := fn(v); err != nil {
				return err
			}
		}
		return nil
	})
}

// TxLocation is where a transaction is in the chain.
type TxLocation struct {
	ID     string `json:"id"`
	Height uint64 `json:"height"`
	Index  uint64 `json:"index"`
}

// Tx returns where transaction id was sealed.
func (s *Store) Tx(id string) (TxLocation, error) {
	loc := TxLocation{ID: id}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTxs).Get([]byte(id))
		if len(v) < 16 {
			return ErrNotFound
		}
		loc.Height, loc.Index = binary.BigEndian.Uint64(v[:8]), binary.BigEndian.Uint64(v[8:])
		return nil
	})
	return loc, err
}

// SessionTx returns the id of the anchor transaction of owner's session.
func (s *Store) SessionTx(owner, sessionID string) (string, error) {
	var id string
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketSessions).Get(anchorKey(owner, sessionID))
		if v == nil {
			return ErrNotFound
		}
		id = string(v)
		return nil
	})
	return id, err
}

// Receipt builds the receipt of transaction id as of the block that sealed
// it, reading only that transaction and that block's checkpoint.
func (s *Store) Receipt(id string) (*chain.Receipt, error) {
	var r chain.Receipt
	var height uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTxs).Get([]byte(id))
		if len(v) < 16 {
			return ErrNotFound
		}
		height, r.Index = binary.BigEndian.Uint64(v[:8]), binary.BigEndian.Uint64(v[8:16])
		r.Tx = bytes.Clone(v[16:])
		cp := tx.Bucket(bucketHeaders).Get(u64(height))
		if cp == nil {
			return fmt.Errorf("checkpoint of block %d: %w", height, ErrNotFound)
		}
		r.Checkpoint = bytes.Clone(cp)
		return nil
	})
	if err != nil {
		return nil, err
	}
	h, err := (&chain.Block{Checkpoint: string(r.Checkpoint)}).Header()
	if err != nil {
		return nil, err
	}
	s.mu.RLock()
	r.Proof, err = s.tree.InclusionProof(r.Index, h.TreeSize)
	s.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// ConsistencyProof proves the log of size1 a prefix of the log of size2.
func (s *Store) ConsistencyProof(size1, size2 uint64) ([][]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tree.ConsistencyProof(size1, size2)
}

// InclusionProof proves leaf index in the log of size.
func (s *Store) InclusionProof(index, size uint64) ([][]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tree.InclusionProof(index, size)
}

// boltNodes reads log nodes from the database, one read transaction each.
type boltNodes struct{ db *bolt.DB }

func (n boltNodes) Node(id compact.NodeID) ([]byte, error) {
	var h []byte
	err := n.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketNodes).Get(logtree.NodeKey(id))
		if v == nil {
			return ErrNotFound
		}
		h = bytes.Clone(v)
		return nil
	})
	return h, err
}

func (n boltNodes) SetNode(compact.NodeID, []byte) error {
	return errors.New("the log is appended only inside a block commit")
}

// txNodes reads and writes log nodes inside one write transaction.
type txNodes struct{ b *bolt.Bucket }

func (n txNodes) Node(id compact.NodeID) ([]byte, error) {
	v := n.b.Get(logtree.NodeKey(id))
	if v == nil {
		return nil, ErrNotFound
	}
	return bytes.Clone(v), nil
}

func (n txNodes) SetNode(id compact.NodeID, hash []byte) error {
	return n.b.Put(logtree.NodeKey(id), hash)
}

// NextRoot returns the log size and root after appending leafHashes to
// the stored log, without storing anything.
func (s *Store) NextRoot(leafHashes [][]byte) (uint64, []byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tree.RootWith(leafHashes)
}

// HasTx reports whether transaction id is sealed.
func (s *Store) HasTx(id string) bool {
	_, err := s.Tx(id)
	return err == nil
}

// BlockRange returns copies of the stored blocks from height from up to to
// (inclusive), stopping after about maxBytes. Callers that write blocks to
// a network peer use it so that no database transaction waits on a slow
// reader.
func (s *Store) BlockRange(from, to uint64, maxBytes int) ([][]byte, error) {
	var out [][]byte
	size := 0
	err := s.Blocks(from, to, func(raw []byte) error {
		out = append(out, bytes.Clone(raw))
		if size += len(raw); size >= maxBytes {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}

var errStop = errors.New("stop")
