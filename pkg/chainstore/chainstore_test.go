package chainstore

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

func TestAppendReopenReceipts(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	c.Append()
	c.Append(chaintest.Anchor(3))

	path := filepath.Join(t.TempDir(), "chain.db")
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, c)
	// Replaying a stored block is a no-op; a different one is refused.
	if _, err := s.Append(c.Blocks[1]); err != nil {
		t.Errorf("replay of block 2: %v", err)
	}
	other := chaintest.New()
	other.Append(chaintest.Anchor(9))
	if _, err := s.Append(other.Blocks[0]); err == nil || !strings.Contains(err.Error(), "a different block") {
		t.Errorf("conflicting block 1: %v", err)
	}
	closeT(t, s)

	s, err = Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	if s.Height() != 3 || len(s.Validators()) != 1 {
		t.Fatalf("after reopen: height %d, validators %v", s.Height(), s.Validators())
	}
	id := chain.TxID(c.Blocks[2].Transactions[0])
	r, err := s.Receipt(id)
	if err != nil {
		t.Fatal(err)
	}
	v, err := chain.VerifyReceipt(r.Marshal(), c.Verifiers(), "")
	if err != nil || v.TxID != id || v.Header.Height != 3 {
		t.Fatalf("receipt: %+v %v", v, err)
	}
	a3 := chaintest.Anchor(3).Anchor
	if sid, err := s.SessionTx(a3.Owner, a3.SessionID); err != nil || sid != id {
		t.Errorf("session index: %q %v", sid, err)
	}
	if _, err := s.SessionTx("someone else", a3.SessionID); !errors.Is(err, ErrNotFound) {
		t.Errorf("another owner's session of the same id: %v, want ErrNotFound", err)
	}
	if _, err := s.Tx("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown tx: %v", err)
	}
	// A fourth block continues the same log.
	c.Append(chaintest.Anchor(4))
	if _, err := s.Append(c.Blocks[3]); err != nil {
		t.Fatalf("append after reopen: %v", err)
	}
}

// TestAuditFindsBlockAlteredOnDisk changes a stored block's bytes behind
// the store's back and checks that an audit names the block and the fault.
func TestAuditFindsBlockAlteredOnDisk(t *testing.T) {
	c := chaintest.New()
	for i := 0; i < 5; i++ {
		c.Append(chaintest.Anchor(2*i), chaintest.Anchor(2*i+1))
	}
	path := filepath.Join(t.TempDir(), "chain.db")
	s := storeWith(t, path, c)
	audit := func() error {
		a := chain.NewAuditor(chain.Origin(chaintest.ChainID), nil)
		return s.Blocks(1, s.Height(), func(raw []byte) error {
			b, err := chain.DecodeBlock(raw)
			if err != nil {
				return err
			}
			return a.Next(b)
		})
	}
	if err := audit(); err != nil {
		t.Fatalf("clean chain: %v", err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucketBlocks)
		v := bk.Get(u64(3))
		return bk.Put(u64(3), []byte(strings.Replace(string(v), "operator@", "intruder@", 1)))
	})
	if err != nil {
		t.Fatal(err)
	}
	err = audit()
	var be *chain.BlockError
	if !errors.As(err, &be) || be.Height != 3 || !strings.Contains(err.Error(), "root does not match the transactions") {
		t.Fatalf("audit of altered block: %v", err)
	}
}

// TestOldSessionIndexIsRebuilt: a store whose anchor index was by session
// alone (before sessions were per owner) gets the per-owner index on open.
func TestOldSessionIndexIsRebuilt(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	path := filepath.Join(t.TempDir(), "chain.db")
	closeT(t, storeWith(t, path, c))
	// Back to the old layout.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketSessions); err != nil {
			return err
		}
		old, err := tx.CreateBucket(bucketOldSessions)
		if err != nil {
			return err
		}
		return old.Put([]byte(chaintest.Anchor(1).Anchor.SessionID), []byte("x"))
	})
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	for i := 1; i <= 2; i++ {
		a := chaintest.Anchor(i)
		raw, _ := a.Encode()
		if id, err := s.SessionTx(a.Anchor.Owner, a.Anchor.SessionID); err != nil || id != chain.TxID(raw) {
			t.Errorf("anchor %d after the rebuild: %q %v", i, id, err)
		}
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketOldSessions) != nil {
			t.Error("the old index is still there")
		}
		return nil
	})
}

// storeWith opens a store at path holding c's blocks.
// closeT closes c and reports a failure: a store that does not close
// cleanly may have lost what the test wrote.
func closeT(t *testing.T, c io.Closer) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

func storeWith(t *testing.T, path string, c *chaintest.Chain) *Store {
	t.Helper()
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range c.Blocks {
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// TestTransactionSealedOnce: a block (signed by a validator, so only a
// faulty or hostile one makes it) that seals a transaction a second time,
// in itself or after an earlier block, is refused, and the transaction
// stays where it was first sealed.
func TestTransactionSealedOnce(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1)) // block 1: the genesis change, the anchor at index 1
	c.Append(chaintest.Anchor(2))
	again := c.Append(chaintest.Anchor(1)) // block 3 seals block 1's anchor again
	twice := chaintest.New()
	twice.Append(chaintest.Anchor(5), chaintest.Anchor(5)) // block 1 with the anchor twice

	s, err := Open(filepath.Join(t.TempDir(), "chain.db"), chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	var refused *chain.BlockError
	if _, err := s.Append(twice.Blocks[0]); !errors.As(err, &refused) || !strings.Contains(err.Error(), "repeats") {
		t.Errorf("a block with a transaction twice: %v", err)
	}
	for _, b := range c.Blocks[:2] {
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Append(again); !errors.As(err, &refused) || !strings.Contains(err.Error(), "sealed already") {
		t.Errorf("a block sealing a sealed transaction again: %v", err)
	}
	if _, err := s.Verify(again); !errors.As(err, &refused) {
		t.Errorf("Verify of that block: %v", err)
	}
	loc, err := s.Tx(chain.TxID(c.Blocks[0].Transactions[1]))
	if err != nil || loc.Height != 1 || loc.Index != 1 {
		t.Errorf("the anchor is at %+v (%v), want height 1 index 1", loc, err)
	}
	if s.Height() != 2 {
		t.Errorf("height %d, want 2", s.Height())
	}
}

// TestCheckpointsOfAnOlderStoreAreFilled: a store written before each
// block's checkpoint was kept beside it gets them when opened, so the
// reads that use them (receipts, block lists, the checkpoint endpoint)
// find every block.
func TestCheckpointsOfAnOlderStoreAreFilled(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1))
	c.Append(chaintest.Anchor(2))
	path := storedChain(t, c)
	rewrite(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketHeaders).Delete(u64(1)) })
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	if cp, err := s.Checkpoint(1); err != nil || string(cp) != c.Blocks[0].Checkpoint {
		t.Errorf("block 1's checkpoint: %v", err)
	}
	n := 0
	if err := s.Headers(1, 2, func(*chain.Header) error { n++; return nil }); err != nil || n != 2 {
		t.Errorf("headers 1..2: %d, %v", n, err)
	}
}

// appendAll stores every block of c in s.
func appendAll(t *testing.T, s *Store, c *chaintest.Chain) {
	t.Helper()
	for _, b := range c.Blocks {
		if _, err := s.Append(b); err != nil {
			t.Fatalf("append %d: %v", b.Height, err)
		}
	}
}

// TestDamagedTreeIsRefused: a flipped bit in a stored node of the log
// tree (bbolt checks no data page) is found when the store opens, since
// the tree then gives another root than the head block says, and the
// store refuses to open: built on, it would give every next block a root
// no other node accepts, signed all the same.
func TestDamagedTreeIsRefused(t *testing.T) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	c.Append(chaintest.Anchor(3))
	path := storedChain(t, c)
	rewrite(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNodes)
		k, v := b.Cursor().Last() // the highest node: a border of the tree
		flipped := bytes.Clone(v)
		flipped[0] ^= 1
		return b.Put(bytes.Clone(k), flipped)
	})
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err == nil {
		closeT(t, s)
		t.Fatal("the damaged store opened")
	}
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "restore the engine's data from a backup") {
		t.Errorf("open: %v", err)
	}
}

// storedChain is the path of a closed store holding c's blocks.
func storedChain(t *testing.T, c *chaintest.Chain) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chain.db")
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, c)
	closeT(t, s)
	return path
}

// rewrite changes the closed store at path behind its back, as an older
// release or a damaged card would have.
func rewrite(t *testing.T, path string, change func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(change); err != nil {
		t.Fatal(err)
	}
	closeT(t, db)
}
