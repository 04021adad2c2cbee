package engine

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
)

// TestSingleNodeRenamed: a one-node engine restarted under another id and
// Raft address (a single Pi that becomes the first node of a cluster)
// recovers its configuration to itself, leads, keeps its chain and key,
// and seals on; so does a later restart at another address alone.
func TestSingleNodeRenamed(t *testing.T) {
	ctx := context.Background()
	cfg := nodeConfig(t, "lucid-engine", true)
	n := startNode(t, cfg)
	testenv.Eventually(t, 10*time.Second, "leader", func() bool { info, err := n.client.Chain(ctx); return err == nil && info.Leader })
	res, err := n.client.Submit(ctx, [][]byte{anchorJSON(1)})
	if err != nil {
		t.Fatal(err)
	}
	first := res.Transactions[0].ID
	testenv.Eventually(t, 10*time.Second, "sealed", func() bool {
		st, err := n.client.Tx(ctx, first)
		return err == nil && st.Status == engineapi.StatusSealed
	})
	before, err := n.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n.stop()

	renamed := cfg
	renamed.NodeID = "pi1"
	renamed.RaftAddr = freeAddr(t)
	renamed.RaftAdvertise = renamed.RaftAddr
	moved := renamed
	moved.RaftAddr = freeAddr(t)
	moved.RaftAdvertise = moved.RaftAddr
	height := before.Height
	for _, c := range []Config{renamed, moved} {
		n := startNode(t, c)
		// The node leads again, as itself alone, and seals new blocks on
		// the same chain.
		testenv.Eventually(t, 10*time.Second, "leader sealing past the height before", func() bool {
			st, err := n.client.Consensus(ctx)
			return err == nil && st.State == "leader" && st.Height > height
		})
		st, err := n.client.Consensus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Servers) != 1 || st.Servers[0].ID != c.NodeID || st.Servers[0].Address != c.RaftAdvertise || !st.Servers[0].Voter {
			t.Fatalf("servers after restarting as %s at %s: %+v", c.NodeID, c.RaftAdvertise, st.Servers)
		}
		if st.ValidatorKey != before.ValidatorKey {
			t.Fatalf("validator key %s, was %s", st.ValidatorKey, before.ValidatorKey)
		}
		res, err := n.client.Submit(ctx, [][]byte{anchorJSON(int(height) + 10)})
		if err != nil {
			t.Fatal(err)
		}
		id := res.Transactions[0].ID
		testenv.Eventually(t, 10*time.Second, "a new anchor sealed", func() bool {
			st, err := n.client.Tx(ctx, id)
			return err == nil && st.Status == engineapi.StatusSealed
		})
		if st, err := n.client.Tx(ctx, first); err != nil || st.Status != engineapi.StatusSealed {
			t.Fatalf("the anchor sealed before the restart: %+v %v", st, err)
		}
		// One chain from block 1, every block signed by the one key (the
		// only validator the audit is given).
		info, err := n.client.Chain(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a := chain.NewAuditor(chain.Origin("test"), []string{before.ValidatorKey})
		for h := uint64(1); h <= info.Height; h++ {
			b, err := n.client.Block(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Next(b); err != nil {
				t.Fatalf("audit at %d: %v", h, err)
			}
			// The key keeps the name it was made with.
			if hdr, err := b.Header(); err != nil || hdr.Proposer != "lucid-engine" {
				t.Fatalf("block %d proposed by %v (%v), want the key's name lucid-engine", h, hdr, err)
			}
		}
		height = info.Height
		n.stop()
	}
}

// TestRecoveryDecision: only one voter that is this node under an
// earlier id (its validator key's name) or address is rewritten; several
// servers, another node, a non-voter or a joining node never are.
func TestRecoveryDecision(t *testing.T) {
	self := raft.Server{ID: "pi1", Address: "192.168.1.11:8094", Suffrage: raft.Voter}
	one := func(id, addr string, s raft.ServerSuffrage) raft.Configuration {
		return raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: s}}}
	}
	three := raft.Configuration{Servers: []raft.Server{
		{ID: "lucid-engine", Address: "127.0.0.1:8094", Suffrage: raft.Voter},
		{ID: "pi2", Address: "192.168.1.12:8094", Suffrage: raft.Voter},
		{ID: "pi3", Address: "192.168.1.13:8094", Suffrage: raft.Voter},
	}}
	for name, tc := range map[string]struct {
		stored    raft.Configuration
		bootstrap bool
		recover   bool
		refusal   string
	}{
		"single Pi renamed":           {one("lucid-engine", "127.0.0.1:8094", raft.Voter), true, true, ""},
		"same id, another address":    {one("pi1", "127.0.0.1:8094", raft.Voter), true, true, ""},
		"already itself":              {one("pi1", "192.168.1.11:8094", raft.Voter), true, false, ""},
		"three servers, one of them":  {three, true, false, ""},
		"three servers, joining":      {three, false, false, ""},
		"two servers":                 {raft.Configuration{Servers: three.Servers[:2]}, true, false, ""},
		"another node (removed here)": {one("pi2", "192.168.1.12:8094", raft.Voter), true, false, "neither"},
		"a non-voter":                 {one("lucid-engine", "127.0.0.1:8094", raft.Nonvoter), true, false, "not a voter"},
		"a joining node":              {one("lucid-engine", "127.0.0.1:8094", raft.Voter), false, false, "LUCID_RAFT_BOOTSTRAP"},
		"no configuration":            {raft.Configuration{}, true, false, ""},
	} {
		t.Run(name, func(t *testing.T) {
			d := recovery(tc.stored, self, "lucid-engine", tc.bootstrap)
			if d.Recover != tc.recover || (tc.refusal == "") != (d.Refusal == "") || !strings.Contains(d.Refusal, tc.refusal) {
				t.Fatalf("recovery = %+v, want recover %v, refusal %q", d, tc.recover, tc.refusal)
			}
		})
	}
}
