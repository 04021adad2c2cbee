package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pickme/lucid/internal/testenv"
	lucidapi "github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// testNode is an engine running in the test process.
type testNode struct {
	app    *App
	http   *httptest.Server
	client *engineapi.Client
	cfg    Config
	cancel context.CancelFunc
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func nodeConfig(t testing.TB, id string, bootstrap bool) Config {
	addr := freeAddr(t)
	return Config{
		DataDir: filepath.Join(t.TempDir(), id), ChainID: "test", NodeID: id,
		BlockInterval: time.Second, RaftAddr: addr, RaftAdvertise: addr, Bootstrap: bootstrap,
		MempoolMax: 100_000, MempoolBytes: 256 << 20, BlockMaxTxs: 20_000, FastElections: true, RaftLog: io.Discard,
		StreamsPerUser: 2, StreamsMax: 4,
	}
}

func startNode(t testing.TB, cfg Config) *testNode {
	t.Helper()
	app := &App{cfg: cfg}
	logger := slog.New(slog.DiscardHandler)
	srv := service.New(servicetest.Config("engine", cfg.DataDir), logger)
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	// Session anchoring is the one submitter.
	n := &testNode{app: app, http: hs, client: engineapi.New(hs.URL, servicetest.Client("anchoring")), cfg: cfg, cancel: cancel}
	t.Cleanup(n.stop)
	return n
}

// kill stops n as a crash would: its Raft stops before the engine could
// hand its leadership over.
func (n *testNode) kill() {
	_ = n.app.node.raft.Shutdown().Error()
	n.stop()
}

func (n *testNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.http.CloseClientConnections()
	n.http.Close()
	_ = n.app.Close()
	n.cancel = nil
}

func anchorJSON(i int) []byte {
	b, _ := chaintest.Anchor(i).Encode()
	return b
}

func TestSealAndReceiptSurviveRestart(t *testing.T) {
	cfg := nodeConfig(t, "solo", true)
	n := startNode(t, cfg)
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "first block", func() bool { info, err := n.client.Chain(ctx); return err == nil && info.Height >= 1 })

	res, err := n.client.Submit(ctx, [][]byte{anchorJSON(1), anchorJSON(2), anchorJSON(1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Transactions) != 3 || res.Transactions[0].ID != res.Transactions[2].ID {
		t.Fatalf("submit = %+v", res)
	}
	id := res.Transactions[1].ID
	testenv.Eventually(t, 10*time.Second, "sealed", func() bool { st, err := n.client.Tx(ctx, id); return err == nil && st.Status == engineapi.StatusSealed })
	info, _ := n.client.Chain(ctx)
	vs, _ := chain.Verifiers(info.Validators)
	receipt, err := n.client.Receipt(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := chain.VerifyReceipt(receipt, vs, ""); err != nil || v.TxID != id {
		t.Fatalf("receipt: %v", err)
	}
	// Sealed once: the duplicate in the same call and a later resubmission
	// do not enter the log again.
	again, err := n.client.Submit(ctx, [][]byte{anchorJSON(2)})
	if err != nil || again.Transactions[0].Status != engineapi.StatusSealed {
		t.Fatalf("resubmit: %+v %v", again, err)
	}
	height := info.Height
	n.stop()

	n2 := startNode(t, cfg)
	testenv.Eventually(t, 10*time.Second, "chain grows after restart", func() bool {
		i, err := n2.client.Chain(ctx)
		return err == nil && i.Height > height
	})
	i2, _ := n2.client.Chain(ctx)
	if i2.TreeSize != 3 { // genesis validator + two anchors
		t.Errorf("tree size after restart = %d, want 3", i2.TreeSize)
	}
	// The whole chain audits cleanly.
	a := chain.NewAuditor(chain.Origin("test"), nil)
	for h := uint64(1); h <= i2.Height; h++ {
		b, err := n2.client.Block(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Next(b); err != nil {
			t.Fatalf("audit: %v", err)
		}
	}
}

// TestHostileInput: a request that cannot be read as a whole gets a 4xx
// naming the problem; within a readable batch, each bad item is refused
// with its reason and the others go on; never a 500.
func TestHostileInput(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	testenv.Eventually(t, 10*time.Second, "leader", func() bool { info, err := n.client.Chain(context.Background()); return err == nil && info.Leader })
	anchoring := servicetest.Client("anchoring")
	post := func(t *testing.T, body string) (int, []byte) {
		t.Helper()
		resp, err := anchoring.Post(n.http.URL+"/api/v1/transactions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, b
	}
	many := "[" + strings.TrimSuffix(strings.Repeat(string(anchorJSON(1))+",", 10_000), ",") + "]"
	for _, tt := range []struct {
		name   string
		body   string
		status int
		want   string
	}{
		{"not JSON", "{nope", 400, "malformed JSON"},
		{"empty", "", 400, "empty body"},
		{"ten thousand", many, 413, "at most 1000"},
		{"huge body", `"` + strings.Repeat("x", 9<<20) + `"`, 413, "larger than"},
		{"empty array", "[]", 400, "empty"},
		{"trailing", string(anchorJSON(1)) + "{}", 400, "after the JSON"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, body := post(t, tt.body); status != tt.status || !bytes.Contains(body, []byte(tt.want)) {
				t.Errorf("status %d, body %s; want %d containing %q", status, body, tt.status, tt.want)
			}
		})
	}
	valid := chaintest.Anchor(5)
	valid.Anchor.ChunkCount = -1
	negative, _ := json.Marshal(valid)
	// Under MaxTxBytes, but 16 KiB of nothing on the chain for good.
	valid = chaintest.Anchor(7)
	valid.Anchor.StartedAt = "2026-11-26T09:00:00." + strings.Repeat("0", 15000) + "Z"
	padded, _ := json.Marshal(valid)
	items := []struct{ body, want string }{
		{string(padded), "anchor.started_at"},
		{`{"type":"session_anchor","anchor":{"chunk_count":"ten"}}`, "chunk_count"},
		{`{"type":"system","evil":true}`, "unknown field"},
		{`{"type":"session_anchor","anchor":{}}`, "anchor.session_id"},
		{`{"type":"payment"}`, "type"},
		{string(negative), "anchor.chunk_count"},
		{`"just a string"`, "transaction"},
	}
	var batch []string
	for _, it := range items {
		batch = append(batch, it.body)
	}
	batch = append(batch, string(anchorJSON(6)))
	status, body := post(t, "["+strings.Join(batch, ",")+"]")
	var res engineapi.SubmitResponse
	if err := json.Unmarshal(body, &res); status != 202 || err != nil || len(res.Transactions) != len(batch) {
		t.Fatalf("a batch of bad items and one good: %d %s", status, body)
	}
	for i, it := range items {
		st := res.Transactions[i]
		if st.Status != engineapi.StatusRefused || !strings.Contains(st.Reason, it.want) || st.Code == "" {
			t.Errorf("item %d (%s): %+v, want refused naming %q", i, it.body, st, it.want)
		}
	}
	if last := res.Transactions[len(batch)-1]; last.Status != engineapi.StatusPending || last.ID == "" {
		t.Errorf("the good item after the bad ones: %+v", last)
	}
	// A follower beyond the head gets the stream's headers at once, not
	// with the next block (which a proxy waiting for headers would not
	// see), and a HEAD of it ends there rather than hold a stream slot.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// More HEADs than the stream slots a caller has (2): each must end.
	for _, method := range []string{http.MethodHead, http.MethodHead, http.MethodHead, http.MethodGet} {
		req, _ := http.NewRequestWithContext(ctx, method, n.http.URL+"/api/v1/blocks/stream?from=1000000", nil)
		resp, err := anchoring.Do(req)
		if err != nil {
			t.Fatalf("%s of a stream beyond the head: %v (no headers before the next block)", method, err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
			t.Errorf("%s of a stream beyond the head: %d %s", method, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if method == http.MethodHead {
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Errorf("HEAD of a stream did not end: %v", err)
			}
		}
		resp.Body.Close()
	}
	for _, path := range []string{"/api/v1/blocks/abc", "/api/v1/blocks/0", "/api/v1/consistency?from=5&to=1", "/api/v1/blocks/stream?from=x"} {
		resp, err := anchoring.Get(n.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("GET %s = %d, want 400", path, resp.StatusCode)
		}
	}
}

// TestOnlyAnchoringSubmits: users, through the gateway, and the other
// services cannot put a transaction on the chain; nor can anyone unknown.
func TestOnlyAnchoringSubmits(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	for name, c := range map[string]*http.Client{
		"a user":            servicetest.User("mallory"),
		"the gateway":       servicetest.Client("gateway"),
		"the block manager": servicetest.Client("blocks"),
		"nobody known":      http.DefaultClient,
	} {
		resp, err := c.Post(n.http.URL+"/api/v1/transactions", "application/json", bytes.NewReader(anchorJSON(1)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s submitting: %d %s, want 403", name, resp.StatusCode, b)
		}
	}
}

// TestOneRefusalHoldsBackNothing: in one batch, an anchor of a session
// that already has another is refused with its reason while the rest are
// sealed; the same session id of another owner is that owner's own.
func TestOneRefusalHoldsBackNothing(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "leader", func() bool { i, err := n.client.Chain(ctx); return err == nil && i.Leader })
	first := chaintest.Anchor(1)
	conflicting := chaintest.Anchor(1)
	conflicting.Anchor.ManifestHash = strings.Repeat("b", 64)
	otherOwner := chaintest.Anchor(1)
	otherOwner.Anchor.Owner = "mallory"
	enc := func(tx *chain.Transaction) []byte { b, _ := tx.Encode(); return b }
	res, err := n.client.Submit(ctx, [][]byte{enc(first), enc(conflicting), anchorJSON(2), enc(otherOwner), enc(first)})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{engineapi.StatusPending, engineapi.StatusRefused, engineapi.StatusPending, engineapi.StatusPending, engineapi.StatusPending}
	for i, st := range res.Transactions {
		if st.Status != want[i] {
			t.Errorf("item %d: %+v, want %s", i, st, want[i])
		}
	}
	if r := res.Transactions[1]; r.Code != service.CodeConflict || !strings.Contains(r.Reason, "already anchored") {
		t.Errorf("the conflicting anchor's refusal: %+v", r)
	}
	for _, i := range []int{0, 2, 3} {
		id := res.Transactions[i].ID
		testenv.Eventually(t, 10*time.Second, "sealed", func() bool { st, err := n.client.Tx(ctx, id); return err == nil && st.Status == engineapi.StatusSealed })
	}
	// Once sealed, the conflicting anchor is still refused, and the
	// sealed one answers sealed.
	res, err = n.client.Submit(ctx, [][]byte{enc(conflicting), enc(first)})
	if err != nil || res.Transactions[0].Status != engineapi.StatusRefused || res.Transactions[1].Status != engineapi.StatusSealed {
		t.Fatalf("after sealing: %+v %v", res, err)
	}
}

// startThreeVoters starts n1, which leads, and n2 and n3, which it adds as
// voters with their validator keys, as the voter API does.
func startThreeVoters(t *testing.T) []*testNode {
	t.Helper()
	ctx := context.Background()
	nodes := []*testNode{startNode(t, nodeConfig(t, "n1", true))}
	testenv.Eventually(t, 10*time.Second, "n1 leads", func() bool { i, err := nodes[0].client.Chain(ctx); return err == nil && i.Leader && i.Height >= 1 })
	for _, id := range []string{"n2", "n3"} {
		n := startNode(t, nodeConfig(t, id, false))
		st, err := n.client.Consensus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := nodes[0].client.AddVoter(ctx, servicetest.OperatorToken, engineapi.AddVoterRequest{ID: id, Address: n.cfg.RaftAddr, Key: st.ValidatorKey}); err != nil {
			t.Fatalf("add %s: %v", id, err)
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// TestThreeVoters: a leader and two joined voters; the leader is killed,
// another is elected, blocks continue, and every height has exactly one
// block on every node.
func TestThreeVoters(t *testing.T) {
	ctx := context.Background()
	nodes := startThreeVoters(t)
	info, _ := nodes[0].client.Chain(ctx)
	if len(info.Validators) != 3 {
		t.Fatalf("validators = %v", info.Validators)
	}
	_, _ = nodes[0].client.Submit(ctx, [][]byte{anchorJSON(1)})
	h0 := info.Height
	testenv.Eventually(t, 10*time.Second, "followers catch up", func() bool {
		for _, n := range nodes[1:] {
			if i, err := n.client.Chain(ctx); err != nil || i.Height < h0+1 {
				return false
			}
		}
		return true
	})
	// Every node says what the cluster committed, and a follower that has
	// caught up has applied all of it (what lucidctl deploy waits for).
	for _, n := range nodes {
		testenv.Eventually(t, 10*time.Second, n.cfg.NodeID+" applies what it knows committed", func() bool {
			st, err := n.client.Consensus(ctx)
			return err == nil && st.CommitIndex > 0 && st.LeaderID != "" && st.AppliedIndex >= st.CommitIndex
		})
		st, err := n.client.Consensus(ctx)
		if err != nil || st.CommitIndex == 0 || st.CommitIndex > st.LastIndex {
			t.Fatalf("%s: commit index %+v %v, want one in (0, last index]", n.cfg.NodeID, st, err)
		}
	}

	nodes[0].kill() // the leader crashes: no hand-over, an election
	var leader *testNode
	testenv.Eventually(t, 15*time.Second, "a new leader", func() bool {
		for _, n := range nodes[1:] {
			if i, err := n.client.Chain(ctx); err == nil && i.Leader {
				leader = n
				return true
			}
		}
		return false
	})
	before, _ := leader.client.Chain(ctx)
	res, err := leader.client.Submit(ctx, [][]byte{anchorJSON(2)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "blocks continue under the new leader", func() bool {
		st, err := leader.client.Tx(ctx, res.Transactions[0].ID)
		i, _ := leader.client.Chain(ctx)
		return err == nil && st.Status == engineapi.StatusSealed && i.Height >= before.Height+2
	})

	// The two survivors hold the same chain, block for block, and it audits.
	final, _ := leader.client.Chain(ctx)
	testenv.Eventually(t, 10*time.Second, "the survivors agree", func() bool {
		i, err := nodes[1].client.Chain(ctx)
		j, err2 := nodes[2].client.Chain(ctx)
		return err == nil && err2 == nil && i.Height >= final.Height && j.Height >= final.Height
	})
	a := chain.NewAuditor(chain.Origin("test"), nil)
	proposers := map[string]bool{}
	for h := uint64(1); h <= final.Height; h++ {
		b1, err1 := nodes[1].client.Block(ctx, h)
		b2, err2 := nodes[2].client.Block(ctx, h)
		if err1 != nil || err2 != nil {
			t.Fatalf("block %d: %v %v", h, err1, err2)
		}
		if b1.Hash != b2.Hash {
			t.Fatalf("height %d has two blocks: %s and %s", h, b1.Hash, b2.Hash)
		}
		if err := a.Next(b1); err != nil {
			t.Fatalf("audit: %v", err)
		}
		proposers[a.Head().Proposer] = true
	}
	if len(proposers) < 2 {
		t.Errorf("proposers %v: the new leader signed nothing", proposers)
	}
}

// TestStoppingLeaderHandsOver: a leader that is stopped (a deploy, docker
// stop, a reboot) gives its leadership to another voter before it goes,
// so the others seal on without waiting out an election timeout.
func TestStoppingLeaderHandsOver(t *testing.T) {
	ctx := context.Background()
	nodes := startThreeVoters(t)
	old := nodes[0]
	// A follower that stops has nothing to hand over.
	follower := nodes[2]
	follower.stop()
	handovers := func(n *testNode) float64 {
		return testutil.ToFloat64(n.app.node.metrics.handovers.WithLabelValues(handOverStopping))
	}
	if got := handovers(follower); got != 0 {
		t.Errorf("a stopping follower counted %v hand-overs", got)
	}
	follower = startNode(t, follower.cfg)
	nodes[2] = follower
	testenv.Eventually(t, 15*time.Second, "n3 back as a follower", func() bool {
		st, err := follower.client.Consensus(ctx)
		return err == nil && st.State == "follower" && st.LeaderID == "n1"
	})

	before, err := old.client.Consensus(ctx)
	if err != nil || before.State != "leader" {
		t.Fatalf("n1: %+v %v, want the leader", before, err)
	}
	old.stop()
	if got := handovers(old); got != 1 {
		t.Fatalf("the stopping leader handed over %v times, want 1", got)
	}
	// The hand-over is the one election: the term moved by one, and a
	// survivor leads in it.
	var leader *testNode
	testenv.Eventually(t, 15*time.Second, "a survivor leads", func() bool {
		for _, n := range nodes[1:] {
			if st, err := n.client.Consensus(ctx); err == nil && st.State == "leader" {
				leader = n
				return true
			}
		}
		return false
	})
	after, err := leader.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Term != before.Term+1 {
		t.Errorf("term %d after the hand-over, want %d: more than one election", after.Term, before.Term+1)
	}
	res, err := leader.client.Submit(ctx, [][]byte{anchorJSON(7)})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "sealed by the new leader", func() bool {
		st, err := leader.client.Tx(ctx, res.Transactions[0].ID)
		return err == nil && st.Status == engineapi.StatusSealed
	})
}

func TestNextSlot(t *testing.T) {
	base := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		now  time.Duration
		want time.Duration
	}{{0, 10 * time.Second}, {time.Millisecond, 10 * time.Second}, {9999 * time.Millisecond, 10 * time.Second}, {10 * time.Second, 20 * time.Second}} {
		if got := nextSlot(base.Add(tt.now), 10*time.Second); !got.Equal(base.Add(tt.want)) {
			t.Errorf("nextSlot(+%s) = %s", tt.now, got)
		}
	}
}

// TestClusterChangesAreGuarded: validator changes cannot come through the
// transaction endpoint, the voter API needs the operator credential, and
// the last validator cannot be removed.
func TestClusterChangesAreGuarded(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "leader with a validator", func() bool {
		i, err := n.client.Chain(ctx)
		return err == nil && i.Leader && len(i.Validators) == 1
	})
	info, _ := n.client.Chain(ctx)
	_, other := chaintest.Key("mallory", 3)
	for _, body := range []string{
		`{"type":"system","system":{"action":"remove_validator","key":"` + info.Validators[0] + `"}}`,
		`{"type":"system","system":{"action":"add_validator","key":"` + other + `"}}`,
	} {
		res, err := n.client.Submit(ctx, [][]byte{[]byte(body)})
		if err != nil || res.Transactions[0].Status != engineapi.StatusRefused || !strings.Contains(res.Transactions[0].Reason, "system transactions are made by the engine") {
			t.Errorf("system transaction through the transaction endpoint: %+v %v", res, err)
		}
	}
	if err := n.client.AddVoter(ctx, "wrong", engineapi.AddVoterRequest{ID: "x", Address: "127.0.0.1:1", Key: other}); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("voter change with a wrong token: %v", err)
	}
	req, _ := http.NewRequest(http.MethodDelete, n.http.URL+"/api/v1/consensus/voters/solo?key="+url.QueryEscape(info.Validators[0]), nil)
	resp, err := servicetest.Operator().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("removing the leader's own key = %d, want 409", resp.StatusCode)
	}
	if i, _ := n.client.Chain(ctx); len(i.Validators) != 1 {
		t.Errorf("validators changed: %v", i.Validators)
	}
}

// TestConsensusStatusIsNotForUsers: the consensus status names the
// cluster's nodes and addresses; the gateway's /blockchain prefix must not
// hand it to any user, with a token or on a route made public, while the
// services and the operator still read it.
func TestConsensusStatusIsNotForUsers(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	for _, p := range []string{"/api/v1/consensus/status", "/consensus/status"} {
		for _, c := range []struct {
			who    string
			client *http.Client
			want   int
		}{
			{"a user through the gateway", servicetest.User("alice"), http.StatusForbidden},
			{"an anonymous user through a public route", servicetest.Client("gateway"), http.StatusForbidden},
			{"a service", servicetest.Client("anchoring"), http.StatusOK},
			{"the operator", servicetest.Operator(), http.StatusOK},
		} {
			resp, err := c.client.Get(n.http.URL + p)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s reading %s = %d, want %d", c.who, p, resp.StatusCode, c.want)
			}
			if c.want == http.StatusForbidden && strings.Contains(string(body), "raft") {
				t.Errorf("%s reading %s was told about Raft: %s", c.who, p, body)
			}
		}
	}
}

// TestChainInfoKeepsTheNodeFromUsers: the chain's description answers
// users too, but which node answers (the host's name, in a cluster) only
// the services and the operator.
func TestChainInfoKeepsTheNodeFromUsers(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	for _, c := range []struct {
		who    string
		client *http.Client
		told   bool
	}{
		{"a user through the gateway", servicetest.User("alice"), false},
		{"an anonymous user through a public route", servicetest.Client("gateway"), false},
		{"a service", servicetest.Client("anchoring"), true},
		{"the operator", servicetest.Operator(), true},
	} {
		resp, err := c.client.Get(n.http.URL + "/api/v1/chain")
		if err != nil {
			t.Fatal(err)
		}
		var info engineapi.ChainInfo
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || info.ChainID == "" {
			t.Fatalf("%s: %d %+v %v", c.who, resp.StatusCode, info, err)
		}
		if told := info.NodeID != ""; told != c.told {
			t.Errorf("%s told the node %q", c.who, info.NodeID)
		}
	}
}

// TestEscapableCharactersAreSealed: an anchor whose owner holds '<', '&'
// and U+2028 is sealed and the chain keeps growing (a JSON encoder that
// escapes them would make the block unappliable).
func TestEscapableCharactersAreSealed(t *testing.T) {
	n := startNode(t, nodeConfig(t, "solo", true))
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "leader", func() bool { i, err := n.client.Chain(ctx); return err == nil && i.Leader })
	tx := chaintest.Anchor(7)
	tx.Anchor.Owner = "Alice <alice@example.org> & co\u2028"
	raw, _ := tx.Encode()
	res, err := n.client.Submit(ctx, [][]byte{raw})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "sealed", func() bool {
		st, err := n.client.Tx(ctx, res.Transactions[0].ID)
		return err == nil && st.Status == engineapi.StatusSealed
	})
	before, _ := n.client.Chain(ctx)
	testenv.Eventually(t, 10*time.Second, "the chain goes on", func() bool {
		i, err := n.client.Chain(ctx)
		return err == nil && i.Height > before.Height
	})
	// A second, different anchor for the same session is refused.
	tx.Anchor.ChunkCount++
	raw2, _ := tx.Encode()
	if res, err := n.client.Submit(ctx, [][]byte{raw2}); err != nil || res.Transactions[0].Status != engineapi.StatusRefused {
		t.Errorf("second anchor of a session: %+v %v", res, err)
	}
}

// TestOpenFailureIsAnError: a store that cannot be opened (here chain.db is
// a directory) is reported, not a panic while cleaning up.
func TestOpenFailureIsAnError(t *testing.T) {
	cfg := nodeConfig(t, "broken", true)
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "chain.db"), 0o700); err != nil {
		t.Fatal(err)
	}
	app := &App{cfg: cfg}
	srv := service.New(servicetest.Config("engine", cfg.DataDir), slog.New(slog.DiscardHandler))
	if err := app.Provision(context.Background(), srv); err == nil || !strings.Contains(err.Error(), "chain.db") {
		t.Fatalf("Provision with a broken store = %v, want an error naming chain.db", err)
	}
}

// TestRemovedValidatorIsNotAddedBack: a node whose validator key was
// removed (a Pi given up for dead that comes back) is refused when it is
// added again with that key, rather than joining as a voter whose blocks
// every node refuses; with a new key it joins.
func TestRemovedValidatorIsNotAddedBack(t *testing.T) {
	ctx := context.Background()
	n1 := startNode(t, nodeConfig(t, "n1", true))
	testenv.Eventually(t, 10*time.Second, "n1 leads", func() bool { i, err := n1.client.Chain(ctx); return err == nil && i.Leader && i.Height >= 1 })
	cfg := nodeConfig(t, "n2", false)
	n2 := startNode(t, cfg)
	st, err := n2.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	add := engineapi.AddVoterRequest{ID: "n2", Address: cfg.RaftAddr, Key: st.ValidatorKey}
	if err := n1.client.AddVoter(ctx, servicetest.OperatorToken, add); err != nil {
		t.Fatal(err)
	}
	// Added twice is added once.
	if err := n1.client.AddVoter(ctx, servicetest.OperatorToken, add); err != nil {
		t.Fatalf("the same voter added again: %v", err)
	}
	if _, err := n1.client.RemoveVoter(ctx, servicetest.OperatorToken, "n2", st.ValidatorKey); err != nil {
		t.Fatal(err)
	}
	err = n1.client.AddVoter(ctx, servicetest.OperatorToken, add)
	var ae *lucidapi.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(err.Error(), "cannot be a validator again") {
		t.Fatalf("a removed key added back: %v", err)
	}
	if info, _ := n1.client.Chain(ctx); slices.Contains(info.Validators, st.ValidatorKey) || len(info.Validators) != 1 {
		t.Errorf("validators %v", info.Validators)
	}
	if cs, _ := n1.client.Consensus(ctx); len(cs.Servers) != 1 {
		t.Errorf("the refused node is a Raft server: %+v", cs.Servers)
	}

	// The node takes a new key.
	n2.stop()
	for _, f := range []string{"validator.key", "validator.pub"} {
		if err := os.Remove(filepath.Join(cfg.DataDir, f)); err != nil {
			t.Fatal(err)
		}
	}
	n2 = startNode(t, cfg)
	st2, err := n2.client.Consensus(ctx)
	if err != nil || st2.ValidatorKey == st.ValidatorKey {
		t.Fatalf("restarted without its key: %v, key %s", err, st2.ValidatorKey)
	}
	add.Key = st2.ValidatorKey
	if err := n1.client.AddVoter(ctx, servicetest.OperatorToken, add); err != nil {
		t.Fatalf("added with a new key: %v", err)
	}
	if info, _ := n1.client.Chain(ctx); !slices.Contains(info.Validators, st2.ValidatorKey) {
		t.Errorf("validators %v lack the new key", info.Validators)
	}
}

// TestRemoveVoter: removing a voter with its key takes it out of Raft and
// its key out of the validators; removing the key of a node that a new
// card replaced (the same id, a new key sealed since) removes the key
// alone and keeps the live node a voter.
func TestRemoveVoter(t *testing.T) {
	ctx := context.Background()
	nodes := startThreeVoters(t)
	leader := nodes[0].client
	keyOf := func(n *testNode) string {
		st, err := n.client.Consensus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.ValidatorKey
	}
	serverIDs := func() []string {
		cs, err := leader.Consensus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, s := range cs.Servers {
			ids = append(ids, s.ID)
		}
		return ids
	}
	validators := func() []string {
		info, err := leader.Chain(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Validators
	}

	// n2's card dies; a new one (no data, the same id and address) takes
	// its place and seals a new key.
	old2 := keyOf(nodes[1])
	nodes[1].stop()
	cfg := nodes[1].cfg
	cfg.DataDir = filepath.Join(t.TempDir(), "n2-new-card")
	nodes[1] = startNode(t, cfg)
	new2 := keyOf(nodes[1])
	if new2 == old2 {
		t.Fatal("the new card has the old key")
	}
	if err := leader.AddVoter(ctx, servicetest.OperatorToken, engineapi.AddVoterRequest{ID: "n2", Address: cfg.RaftAddr, Key: new2}); err != nil {
		t.Fatal(err)
	}
	if _, err := leader.RemoveVoter(ctx, servicetest.OperatorToken, "n2", old2); err != nil {
		t.Fatal(err)
	}
	if ids := serverIDs(); !slices.Contains(ids, "n2") {
		t.Errorf("removing n2's old key took the new card out of Raft: servers %v", ids)
	}
	if v := validators(); slices.Contains(v, old2) || !slices.Contains(v, new2) {
		t.Errorf("validators %v: want n2's new key, not its old one", v)
	}

	// n3 leaves, with its key.
	key3 := keyOf(nodes[2])
	if _, err := leader.RemoveVoter(ctx, servicetest.OperatorToken, "n3", key3); err != nil {
		t.Fatal(err)
	}
	if ids := serverIDs(); slices.Contains(ids, "n3") {
		t.Errorf("n3 is still a server: %v", ids)
	}
	if v := validators(); slices.Contains(v, key3) {
		t.Errorf("n3's key is still a validator: %v", v)
	}
}

// TestLeadershipLostMidChangeIsNotLeading: a change of the voters whose
// leader loses its quorum while Raft commits it, or while it waits for a
// validator key to be sealed, is answered as not leading, at once, so the
// caller takes it to the next leader, rather than as a timeout seconds
// later that it would give up on. Raft's refusals are told apart by
// whether trying again may pass.
func TestLeadershipLostMidChangeIsNotLeading(t *testing.T) {
	ctx := context.Background()
	n1 := startNode(t, nodeConfig(t, "n1", true))
	testenv.Eventually(t, 10*time.Second, "n1 leads", func() bool { i, err := n1.client.Chain(ctx); return err == nil && i.Leader && i.Height >= 1 })
	n2 := startNode(t, nodeConfig(t, "n2", false))
	st, err := n2.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.client.AddVoter(ctx, servicetest.OperatorToken, engineapi.AddVoterRequest{ID: "n2", Address: n2.cfg.RaftAddr, Key: st.ValidatorKey}); err != nil {
		t.Fatal(err)
	}
	n3 := startNode(t, nodeConfig(t, "n3", false))
	st3, err := n3.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// n2 gone, n1 can commit nothing: it steps down once its lease ends,
	// with a change of the voters under way.
	n2.kill()
	_, err = n1.client.RemoveVoter(ctx, servicetest.OperatorToken, "n3", "")
	var ae *lucidapi.Error
	if !errors.As(err, &ae) || ae.Code != engineapi.CodeNotLeader {
		t.Errorf("a change of the voters with the quorum lost: %v, want %s (not the leader)", err, engineapi.CodeNotLeader)
	}
	tx := &chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionAddValidator, Key: st3.ValidatorKey, Node: "n3"}}
	err = n1.app.node.sealSystem(ctx, tx)
	var he *service.HTTPError
	if !errors.As(err, &he) || he.Code != engineapi.CodeNotLeader {
		t.Errorf("sealing with the quorum lost: %v, want %s (not the leader)", err, engineapi.CodeNotLeader)
	}

	for _, lost := range []error{raft.ErrLeadershipLost, raft.ErrNotLeader} {
		if err := configurationError(n1.app.node, "add voter", lost); !errors.As(err, &he) || he.Code != engineapi.CodeNotLeader {
			t.Errorf("%v: %v, want %s", lost, err, engineapi.CodeNotLeader)
		}
	}
	for _, later := range []error{raft.ErrEnqueueTimeout, raft.ErrLeadershipTransferInProgress, raft.ErrRaftShutdown} {
		if err := configurationError(n1.app.node, "add voter", later); !errors.As(err, &he) || he.Code != engineapi.CodeConsensus {
			t.Errorf("%v: %v, want %s (try again)", later, err, engineapi.CodeConsensus)
		}
	}
	refused := fmt.Errorf("found duplicate address in configuration: %s", n3.cfg.RaftAddr)
	if err := configurationError(n1.app.node, "add voter", refused); !errors.As(err, &he) || he.Code != service.CodeConflict {
		t.Errorf("a duplicate address: %v, want %s (no retry mends it)", err, service.CodeConflict)
	}
}

// TestStepsDown: a leader that keeps leading is waited for no longer than
// asked; an engine that does not lead has stepped down already.
func TestStepsDown(t *testing.T) {
	ctx := context.Background()
	n1 := startNode(t, nodeConfig(t, "n1", true))
	testenv.Eventually(t, 10*time.Second, "n1 leads", func() bool { i, err := n1.client.Chain(ctx); return err == nil && i.Leader })
	start := time.Now()
	if n1.app.node.stepsDown(200 * time.Millisecond) {
		t.Error("a leader alone said to have stepped down")
	}
	if waited := time.Since(start); waited < 200*time.Millisecond || waited > 5*time.Second {
		t.Errorf("waited %s for a leader to step down, want 200ms", waited)
	}
	n2 := startNode(t, nodeConfig(t, "n2", false))
	if !n2.app.node.stepsDown(time.Minute) {
		t.Error("an engine that waits to be added said to lead")
	}
}

// TestVoterKeysAsSpelt: a voter change takes a validator key only as its
// node spells it. The chain compares keys as strings: the leader's own key
// added again with a space after it would be a second validator of the
// same key, and every block it signs ambiguous; a key removed with a
// newline after it would stay a validator, its node a voter.
func TestVoterKeysAsSpelt(t *testing.T) {
	ctx := context.Background()
	cfg := nodeConfig(t, "n1", true)
	n1 := startNode(t, cfg)
	testenv.Eventually(t, 10*time.Second, "n1 leading", func() bool { i, err := n1.client.Chain(ctx); return err == nil && i.Leader && i.Height >= 1 })
	st, err := n1.client.Consensus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ae *lucidapi.Error
	err = n1.client.AddVoter(ctx, servicetest.OperatorToken, engineapi.AddVoterRequest{ID: "n1", Address: cfg.RaftAddr, Key: st.ValidatorKey + " "})
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "as the node's validator.pub spells it") {
		t.Errorf("the leader's key with a space after it: %v, want 400", err)
	}
	_, err = n1.client.RemoveVoter(ctx, servicetest.OperatorToken, "n2", st.ValidatorKey+"\n")
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("a key with a newline after it: %v, want 400", err)
	}
	info, err := n1.client.Chain(ctx)
	if err != nil || !slices.Equal(info.Validators, []string{st.ValidatorKey}) {
		t.Errorf("validators %q (%v), want the leader's key once", info.Validators, err)
	}
}
