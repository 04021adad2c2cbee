package restore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/logtree"
	"github.com/pickme/lucid/pkg/packstore"
)

// hostServices answers the engine's chain and the data chain's status as
// a running host would.
type hostServices struct{ url string }

func (h hostServices) Client(context.Context, string, time.Duration) (*http.Client, string, error) {
	return http.DefaultClient, h.url, nil
}

// TestHoldsDataSaysWhatTheBackupLacks: the confirmation before a restore
// says how far the host is ahead of the backup, and what that costs, so
// that an older backup is not put over newer anchors unread.
func TestHoldsDataSaysWhatTheBackupLacks(t *testing.T) {
	chainInfo := engineapi.ChainInfo{ChainID: "lucid-a", Height: 120, TreeSize: 300}
	status := datachainapi.Status{Stats: packstore.Stats{Chunks: 50, Sessions: 5}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/chain":
			_ = json.NewEncoder(w).Encode(chainInfo)
		case "/api/v1/status":
			_ = json.NewEncoder(w).Encode(status)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	host := hostServices{srv.URL}
	ctx := context.Background()

	for _, tc := range []struct {
		name   string
		backup snapshotapi.Facts
		want   []string
		not    []string
	}{
		{"an older backup", snapshotapi.Facts{
			Chain:     &snapshotapi.ChainFacts{ChainID: "lucid-a", Height: 100, TreeSize: 260},
			DataChain: &snapshotapi.DataChainFacts{Chunks: 40},
		}, []string{
			"the chain holds 300 transactions in 120 blocks, 40 transactions in 20 blocks more than the backup",
			"anchors in them are lost unless another block manager holds them",
			"take a backup of the host first",
			"the data chain holds 50 chunks of 5 sessions, 10 more than the backup",
		}, nil},
		{"a backup as new as the host", snapshotapi.Facts{
			Chain:     &snapshotapi.ChainFacts{ChainID: "lucid-a", Height: 120, TreeSize: 300},
			DataChain: &snapshotapi.DataChainFacts{Chunks: 50},
		}, []string{"the chain holds 300 transactions in 120 blocks", "the data chain holds 50 chunks of 5 sessions"},
			[]string{"more than the backup", "another chain"}},
		{"another chain's backup", snapshotapi.Facts{
			Chain: &snapshotapi.ChainFacts{ChainID: "lucid-b", Height: 500, TreeSize: 900},
		}, []string{"of another chain than the backup's (lucid-a, the backup's lucid-b)"}, []string{"more than the backup"}},
	} {
		saysWhat(t, tc.name, strings.Join(holdsData(ctx, host, tc.backup), "; "), tc.want, tc.not)
	}
}

// saysWhat checks that got says each of want and none of not.
func saysWhat(t *testing.T, name, got string, want, not []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s: %q lacks %q", name, got, w)
		}
	}
	for _, n := range not {
		if strings.Contains(got, n) {
			t.Errorf("%s: %q says %q", name, got, n)
		}
	}
}

// chainOf is a log of n transactions whose leaves are named by name(i).
func chainOf(t *testing.T, n int, name func(int) string) *logtree.Tree {
	t.Helper()
	tree, err := logtree.New(logtree.MemoryStore{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := tree.AppendLeaf([]byte(name(i))); err != nil {
			t.Fatal(err)
		}
	}
	return tree
}

// rootOf is tree's base64 root at size, as chain facts and the engine give it.
func rootOf(t *testing.T, tree *logtree.Tree, size uint64) string {
	t.Helper()
	r, err := tree.RootAt(size)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(r)
}

// TestHoldsDataComparesHistories: a host whose chain began with other
// transactions than the backup's (a fork, or another node's chain of the
// same name) is said to run another history, which the restore replaces
// whole, rather than to be some transactions ahead; the comparison is the
// engine's consistency proof, checked against the backup's root.
func TestHoldsDataComparesHistories(t *testing.T) {
	tx := func(i int) string { return fmt.Sprintf("tx-%d", i) }
	forked := func(i int) string {
		if i == 200 {
			return "another tx-200"
		}
		return tx(i)
	}
	ours := chainOf(t, 300, tx)
	theirs := chainOf(t, 300, forked)
	var host *logtree.Tree
	proofs := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/chain":
			_ = json.NewEncoder(w).Encode(engineapi.ChainInfo{ChainID: "lucid-a", Height: 120, TreeSize: host.Size(), Root: rootOf(t, host, host.Size())})
		case "/api/v1/consistency":
			proofs++
			var from, to uint64
			if _, err := fmt.Sscan(r.URL.Query().Get("from"), &from); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if _, err := fmt.Sscan(r.URL.Query().Get("to"), &to); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			p, err := host.ConsistencyProof(from, to)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			out := engineapi.ConsistencyProof{From: from, To: to}
			for _, h := range p {
				out.Proof = append(out.Proof, base64.StdEncoding.EncodeToString(h))
			}
			_ = json.NewEncoder(w).Encode(out)
		case "/api/v1/status":
			_ = json.NewEncoder(w).Encode(datachainapi.Status{})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	backupAt := func(size uint64) snapshotapi.Facts {
		return snapshotapi.Facts{Chain: &snapshotapi.ChainFacts{ChainID: "lucid-a", Height: 100, TreeSize: size, Root: rootOf(t, ours, size)}}
	}
	const another = "of another history than the backup's"

	for _, tc := range []struct {
		name   string
		host   *logtree.Tree
		backup snapshotapi.Facts
		want   []string
		not    []string
	}{
		{"ahead on the backup's history", ours, backupAt(260),
			[]string{"40 transactions in 20 blocks more than the backup: the restore drops them"}, []string{another, "not compared"}},
		{"ahead on another history", theirs, backupAt(260),
			[]string{"the chain holds 300 transactions in 120 blocks, " + another + " (its first 260 transactions are not the backup's)",
				"the restore replaces all of them", "anchors in them are lost", "take a backup of the host first"},
			// No block of another history follows the restored head.
			[]string{"more than the backup", "fence lift"}},
		{"ahead of a backup taken before the fork", theirs, backupAt(200),
			[]string{"100 transactions in 20 blocks more than the backup"}, []string{another}},
		{"as far as the backup, on its history", ours, backupAt(300),
			[]string{"the chain holds 300 transactions in 120 blocks"}, []string{another, "more than the backup", "not compared"}},
		{"as far as the backup, on another history", theirs, backupAt(300),
			[]string{another}, []string{"more than the backup"}},
		{"behind the backup", chainOf(t, 200, forked), backupAt(260),
			[]string{"the chain holds 200 transactions in 120 blocks, fewer than the backup's 260 and not compared with its history",
				"take a backup of the host first"}, []string{another, "more than the backup"}},
	} {
		host = tc.host
		saysWhat(t, tc.name, strings.Join(holdsData(ctx, hostServices{srv.URL}, tc.backup), "; "), tc.want, tc.not)
	}
	if proofs != 3 {
		t.Errorf("%d consistency proofs asked for, want 3 (one per host ahead of its backup)", proofs)
	}

	// An engine that cannot prove its history, or whose proof is cut
	// short, leaves the figures said, with why they were not compared:
	// neither is a sign of another history.
	for name, answer := range map[string]func(http.ResponseWriter){
		"an error": func(w http.ResponseWriter) {
			http.Error(w, `{"error":{"code":"LUCID_ERR_5000","message":"no proof"}}`, http.StatusInternalServerError)
		},
		"an empty proof": func(w http.ResponseWriter) {
			_ = json.NewEncoder(w).Encode(engineapi.ConsistencyProof{From: 260, To: 300, Proof: []string{}})
		},
	} {
		broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/api/v1/consistency" {
				answer(w)
				return
			}
			srv.Config.Handler.ServeHTTP(w, r)
		}))
		host = theirs
		got := strings.Join(holdsData(ctx, hostServices{broken.URL}, backupAt(260)), "; ")
		if !strings.Contains(got, "40 transactions in 20 blocks more than the backup (not compared with the backup's history: the engine's consistency proof:") ||
			strings.Contains(got, another) {
			t.Errorf("an engine answering %s: %q", name, got)
		}
		broken.Close()
	}
}
