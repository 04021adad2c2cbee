package chainstore

import (
	"errors"
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
	for _, b := range c.Blocks {
		if _, err := s.Append(b); err != nil {
			t.Fatalf("append %d: %v", b.Height, err)
		}
	}
	// Replaying a stored block is a no-op; a different one is refused.
	if _, err := s.Append(c.Blocks[1]); err != nil {
		t.Errorf("replay of block 2: %v", err)
	}
	other := chaintest.New()
	other.Append(chaintest.Anchor(9))
	if _, err := s.Append(other.Blocks[0]); err == nil || !strings.Contains(err.Error(), "a different block") {
		t.Errorf("conflicting block 1: %v", err)
	}
	s.Close()

	s, err = Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
	if sid, err := s.SessionTx(chaintest.Anchor(3).Anchor.SessionID); err != nil || sid != id {
		t.Errorf("session index: %q %v", sid, err)
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
	s, err := Open(path, chain.Origin(chaintest.ChainID))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range c.Blocks {
		if _, err := s.Append(b); err != nil {
			t.Fatal(err)
		}
	}
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
	err = s.db.Update(func(tx *bolt.Tx) error {
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
