package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

func engineNode(t *testing.T, id string, bootstrap bool) (*proc, *engineapi.Client, string) {
	raft := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	p := newProc(t, "engine", "LUCID_BLOCK_INTERVAL=1s", "LUCID_CHAIN_ID=e2e", "LUCID_RAFT_FAST=true",
		"LUCID_NODE_ID="+id, "LUCID_RAFT_ADDR="+raft, fmt.Sprintf("LUCID_RAFT_BOOTSTRAP=%v", bootstrap))
	p.start()
	return p, engineapi.New(p.url, servicetest.Client("anchoring")), raft
}

// TestThreeVoterFailoverWithKill runs three engine processes, kills the
// leader with SIGKILL, and checks that another is elected, blocks go on,
// the killed node catches up when it returns, and every node holds the
// same block at every height.
func TestThreeVoterFailoverWithKill(t *testing.T) {
	ctx := context.Background()
	type member struct {
		p *proc
		c *engineapi.Client
	}
	p1, c1, _ := engineNode(t, "n1", true)
	p1.ready()
	members := []member{{p1, c1}}
	for _, id := range []string{"n2", "n3"} {
		p, c, raft := engineNode(t, id, false)
		st, err := c.Consensus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := c1.AddVoter(ctx, servicetest.OperatorToken, engineapi.AddVoterRequest{ID: id, Address: raft, Key: st.ValidatorKey}); err != nil {
			t.Fatalf("add %s: %v", id, err)
		}
		members = append(members, member{p, c})
	}
	leaderOf := func() int {
		for i, m := range members {
			if info, err := m.c.Chain(ctx); err == nil && info.Leader {
				return i
			}
		}
		return -1
	}
	old := leaderOf()
	if old < 0 {
		t.Fatal("no leader")
	}
	members[old].p.kill()
	var next int
	testenv.Eventually(t, 15*time.Second, "a new leader", func() bool { next = leaderOf(); return next >= 0 && next != old })

	raw, _ := chaintest.Anchor(77).Encode()
	res, err := members[next].c.Submit(ctx, [][]byte{raw})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "sealed under the new leader", func() bool {
		st, err := members[next].c.Tx(ctx, res.Transactions[0].ID)
		return err == nil && st.Status == engineapi.StatusSealed
	})

	members[old].p.start() // the old leader returns and catches up
	head, _ := members[next].c.Chain(ctx)
	testenv.Eventually(t, 20*time.Second, "every node at the head", func() bool {
		for _, m := range members {
			if i, err := m.c.Chain(ctx); err != nil || i.Height < head.Height {
				return false
			}
		}
		return true
	})
	a := chain.NewAuditor(chain.Origin("e2e"), nil)
	signers := map[string]bool{}
	for h := uint64(1); h <= head.Height; h++ {
		var hash string
		for i, m := range members {
			b, err := m.c.Block(ctx, h)
			if err != nil {
				t.Fatalf("node %d block %d: %v", i, h, err)
			}
			if hash != "" && b.Hash != hash {
				t.Fatalf("height %d has two blocks: %s and %s", h, hash, b.Hash)
			}
			hash = b.Hash
			if i == 0 {
				if err := a.Next(b); err != nil {
					t.Fatalf("audit: %v", err)
				}
				signers[a.Head().Proposer] = true
			}
		}
	}
	if len(signers) < 2 {
		t.Errorf("blocks signed by %v only; the new leader signed none", signers)
	}
}
