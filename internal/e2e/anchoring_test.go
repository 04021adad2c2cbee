package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// stack is an engine and a session anchoring service, as processes.
type stack struct {
	engine, anchoring *proc
	client            *engineapi.Client
}

func startStack(t *testing.T) *stack {
	raft := testenv.FreePort(t)
	eng := newProc(t, "engine", "LUCID_BLOCK_INTERVAL=1s", "LUCID_CHAIN_ID=e2e", "LUCID_RAFT_FAST=true",
		fmt.Sprintf("LUCID_RAFT_ADDR=127.0.0.1:%d", raft))
	eng.start()
	eng.ready() // a leader is elected
	// The tests' user is of the free tier, and the load tests post it
	// thousands of anchors a minute: no daily bound (which has tests of
	// its own) for it here.
	anc := newProc(t, "anchoring", "BLOCKCHAIN_ENGINE_URL="+eng.url, "LUCID_ANCHOR_RESUBMIT=2s", "LUCID_ANCHORS_PER_DAY_FREE=0")
	anc.start()
	return &stack{engine: eng, anchoring: anc, client: engineapi.New(eng.url, servicetest.Client("anchoring"))}
}

func manifest(i int) []byte {
	b, _ := json.Marshal(chaintest.Anchor(i).Anchor)
	return b
}

type anchorStatus struct {
	SessionID     string  `json:"session_id"`
	TxID          string  `json:"tx_id"`
	Status        string  `json:"status"`
	Reason        string  `json:"reason"`
	Height        uint64  `json:"height"`
	Index         *uint64 `json:"index"`
	Confirmations uint64  `json:"confirmations"`
	Receipt       string  `json:"receipt"`
}

func postAnchor(url string, body []byte) (int, anchorStatus, string, error) {
	return postAnchorAs(user, url, body)
}

// postAnchorAs posts a manifest for the user of client c.
func postAnchorAs(c *http.Client, url string, body []byte) (int, anchorStatus, string, error) {
	resp, err := c.Post(url+"/api/v1/anchors", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, anchorStatus{}, "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var st anchorStatus
	_ = json.Unmarshal(raw, &st)
	return resp.StatusCode, st, string(raw), nil
}

func getAnchor(url, sid string) (anchorStatus, error) { return getAnchorAs(user, url, sid) }

// getAnchorAs asks for a session's anchor as the user of client c.
func getAnchorAs(c *http.Client, url, sid string) (anchorStatus, error) {
	resp, err := c.Get(url + "/api/v1/anchors/" + sid)
	if err != nil {
		return anchorStatus{}, err
	}
	defer resp.Body.Close()
	var st anchorStatus
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status %d", resp.StatusCode)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

func TestAnchorSealedWithVerifiableReceipt(t *testing.T) {
	s := startStack(t)
	code, st, body, err := postAnchor(s.anchoring.url, manifest(1))
	if err != nil || code != 202 || st.Status != "pending" {
		t.Fatalf("POST = %d %s %v", code, body, err)
	}
	// The same manifest again is the same anchor; another manifest for the
	// same session is a conflict.
	if code, again, _, _ := postAnchor(s.anchoring.url, manifest(1)); code != 202 || again.TxID != st.TxID {
		t.Errorf("repeat = %d %+v", code, again)
	}
	other := chaintest.Anchor(1).Anchor
	other.ChunkCount++
	ob, _ := json.Marshal(other)
	if code, _, body, _ := postAnchor(s.anchoring.url, ob); code != 409 {
		t.Errorf("conflicting manifest = %d %s", code, body)
	}

	var sealed anchorStatus
	testenv.Eventually(t, 20*time.Second, "sealed with a receipt", func() bool {
		sealed, err = getAnchor(s.anchoring.url, st.SessionID)
		return err == nil && sealed.Status == "sealed" && sealed.Receipt != ""
	})
	info, err := s.client.Chain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	vs, _ := chain.Verifiers(info.Validators)
	v, err := chain.VerifyReceipt([]byte(sealed.Receipt), vs, "")
	if err != nil || v.TxID != st.TxID || v.Header.Height != sealed.Height {
		t.Fatalf("offline verification: %v", err)
	}
	// The service's own verify endpoint agrees, and spots a flipped byte.
	for _, tc := range []struct {
		receipt string
		valid   bool
	}{{sealed.Receipt, true}, {strings.Replace(sealed.Receipt, "index ", "index 1", 1), false}} {
		resp, err := user.Post(s.anchoring.url+"/api/v1/anchors/verify", "text/plain", strings.NewReader(tc.receipt))
		if err != nil {
			t.Fatal(err)
		}
		var res struct {
			Valid  bool
			Reason string
		}
		_ = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if res.Valid != tc.valid {
			t.Errorf("verify endpoint: valid=%v reason=%q, want %v", res.Valid, res.Reason, tc.valid)
		}
	}
}

func TestAnchoringRejectsHostileInput(t *testing.T) {
	s := startStack(t)
	bad := chaintest.Anchor(2).Anchor
	bad.SessionID, bad.MerkleRoot = "x", "zz"
	bb, _ := json.Marshal(bad)
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{"{", 400, "JSON"},
		{`{"session_id": 5}`, 400, "session_id"},
		{`{"surprise": 1}`, 400, "unknown field"},
		{string(bb), 400, "merkle_root"},
		{`{"owner":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "larger than"},
	} {
		code, _, body, err := postAnchor(s.anchoring.url, []byte(tc.body))
		if err != nil || code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("POST %.40q = %d %s (%v); want %d with %q", tc.body, code, body, err, tc.code, tc.want)
		}
	}
}

// TestKillNineUnderLoad (LUCID_CHAOS_ROUNDS kills, default 4) kills the engine and the anchoring service with
// SIGKILL at random moments while anchors pour in, restarts them, and then
// checks: every anchor that got a 202 is sealed, exactly once; no block
// seen before a kill changed; the whole chain audits.
func TestKillNineUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	s := startStack(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var acked sync.Map // session id → tx id
	var ackCount, next atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			retry := time.NewTicker(20 * time.Millisecond)
			defer retry.Stop()
			for ctx.Err() == nil {
				i := int(next.Add(1))
				code, st, _, err := postAnchor(s.anchoring.url, manifest(i))
				if err == nil && code == 202 {
					acked.Store(st.SessionID, st.TxID)
					ackCount.Add(1)
				} else {
					// The service is down: try again at the next tick.
					select {
					case <-ctx.Done():
					case <-retry.C:
					}
				}
			}
		}()
	}
	// moreAcked waits until the load has had n more anchors acknowledged:
	// the stack, restarted or not, is serving again.
	moreAcked := func(n int64) {
		t.Helper()
		want := ackCount.Load() + n
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d more anchors acknowledged", n), func() bool { return ackCount.Load() >= want })
	}

	seen := map[uint64]string{} // height → hash, as observed before kills
	record := func() {
		info, err := s.client.Chain(context.Background())
		if err != nil {
			return
		}
		for h := uint64(1); h <= info.Height; h++ {
			if _, ok := seen[h]; ok {
				continue
			}
			if b, err := s.client.Block(context.Background(), h); err == nil {
				seen[h] = b.Hash
			}
		}
	}
	rounds := 4
	if n, err := strconv.Atoi(os.Getenv("LUCID_CHAOS_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	for r := 0; r < rounds; r++ {
		moreAcked(int64(10 + rng.IntN(40))) // a random stretch of load between kills
		record()
		switch rng.IntN(3) {
		case 0:
			s.engine.kill()
			s.engine.start()
		case 1:
			s.anchoring.kill()
			s.anchoring.start()
		default:
			s.engine.kill()
			s.anchoring.kill()
			s.anchoring.start()
			s.engine.start()
		}
	}
	moreAcked(20)
	stop()
	wg.Wait()

	var sessions []string
	acked.Range(func(k, _ any) bool { sessions = append(sessions, k.(string)); return true })
	if len(sessions) < 50 {
		t.Fatalf("only %d anchors acknowledged; the load did not run", len(sessions))
	}
	t.Logf("%d anchors acknowledged across %d kills", len(sessions), rounds)
	began := time.Now()
	defer func() { t.Logf("checked in %s", time.Since(began)) }()
	deadline := time.Now().Add(60 * time.Second)
	for _, sid := range sessions {
		var st anchorStatus
		var err error
		sealed := testenv.PollUntil(time.Until(deadline), func() bool {
			st, err = getAnchor(s.anchoring.url, sid)
			return err == nil && st.Status == "sealed"
		})
		if !sealed {
			t.Fatalf("anchor of session %s acknowledged but not sealed: %+v %v", sid, st, err)
		}
	}

	t.Logf("all sealed after %s", time.Since(began))
	// Audit the chain: every block verifies, none changed, and every
	// acknowledged transaction is in it exactly once.
	info, err := s.client.Chain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a := chain.NewAuditor(chain.Origin("e2e"), nil)
	count := map[string]int{}
	for h := uint64(1); h <= info.Height; h++ {
		b, err := s.client.Block(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Next(b); err != nil {
			t.Fatalf("audit: %v", err)
		}
		if old, ok := seen[h]; ok && old != b.Hash {
			t.Errorf("block %d changed from %s to %s", h, old, b.Hash)
		}
		for _, raw := range b.Transactions {
			count[chain.TxID(raw)]++
		}
	}
	for _, sid := range sessions {
		txid, _ := acked.Load(sid)
		if n := count[txid.(string)]; n != 1 {
			t.Errorf("anchor of session %s is in the chain %d times", sid, n)
		}
	}
}

// TestNoAnchorWedgesTheQueue submits, from several users at once and in a
// random order, valid anchors, the same ones again, conflicting manifests
// for sessions already anchored, another user's anchors of the same session
// ids, malformed manifests, and anchors the engine must refuse because the
// chain already holds another for their session (one put there behind
// anchoring's back: the wedge of old). Session anchoring is killed and
// restarted halfway. Then every valid anchor is sealed exactly once with a
// receipt that verifies, every refused one says why, nothing else reached
// the chain, and the queue is empty. LUCID_QUEUE_SEED repeats a run.
func TestNoAnchorWedgesTheQueue(t *testing.T) {
	s := startStack(t)
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("LUCID_QUEUE_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (LUCID_QUEUE_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 16))
	users := []string{"alice", "bob", "carol", "dave", "erin", "mallory"}
	clients := map[string]*http.Client{}
	for _, u := range users {
		clients[u] = servicetest.User(u)
	}
	hash := func() string {
		var b [32]byte
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return hex.EncodeToString(b[:])
	}
	newSession := func() string {
		var b [16]byte
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	}
	anchorOf := func(owner, sid string) *chain.SessionAnchor {
		return &chain.SessionAnchor{SessionID: sid, Owner: owner, ManifestHash: hash(), MerkleRoot: hash(), ChunkCount: int64(rng.IntN(100)),
			StartedAt: "2026-12-01T10:00:00Z", EndedAt: "2026-12-01T11:00:00Z"}
	}
	txID := func(m *chain.SessionAnchor) string {
		raw, err := (&chain.Transaction{Type: chain.TypeSessionAnchor, Anchor: m}).Encode()
		if err != nil {
			t.Fatal(err)
		}
		return chain.TxID(raw)
	}

	// An operation is one POST and the answer it must get.
	type op struct {
		kind string
		user string
		body []byte
		want int
		m    *chain.SessionAnchor
	}
	// back is closed once anchoring, killed halfway, is serving again: a
	// client whose request found it down tries again then.
	var back chan struct{}
	post := func(o op) anchorStatus {
		t.Helper()
		code, st, body, err := postAnchorAs(clients[o.user], s.anchoring.url, o.body)
		if err != nil && back != nil {
			<-back
			code, st, body, err = postAnchorAs(clients[o.user], s.anchoring.url, o.body)
		}
		if err != nil {
			t.Errorf("%s by %s: %v", o.kind, o.user, err)
		} else if code != o.want {
			t.Errorf("%s by %s: %d %s, want %d", o.kind, o.user, code, body, o.want)
		}
		return st
	}
	run := func(ops []op, each func(op, anchorStatus)) {
		jobs := make(chan op)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for o := range jobs {
					st := post(o)
					mu.Lock()
					each(o, st)
					mu.Unlock()
				}
			}()
		}
		for _, o := range ops {
			jobs <- o
		}
		close(jobs)
		wg.Wait()
	}
	body := func(m *chain.SessionAnchor) []byte { b, _ := json.Marshal(m); return b }

	valid := map[string]*chain.SessionAnchor{} // tx id → anchor, each to be sealed once
	outside := map[string]bool{}               // tx ids put on the chain behind anchoring's back
	var never []string                         // tx ids that must never reach the chain
	type refused struct{ user, sid string }
	var poisoned []refused
	record := func(o op, st anchorStatus) {
		switch o.kind {
		case "valid", "another user's id":
			if st.TxID != txID(o.m) {
				t.Errorf("%s: tx %s, want %s", o.kind, st.TxID, txID(o.m))
			}
			valid[st.TxID] = o.m
		case "again":
			if st.TxID != txID(o.m) {
				t.Errorf("the same anchor again: tx %s, want the first %s", st.TxID, txID(o.m))
			}
		}
	}

	// Half the valid anchors, then anchoring dies and comes back.
	var first []op
	for range 120 {
		u := users[rng.IntN(len(users))]
		m := anchorOf(u, newSession())
		first = append(first, op{"valid", u, body(m), 202, m})
	}
	half := len(first) / 2
	run(first[:half], record)
	s.anchoring.kill()
	back = make(chan struct{})
	go func() { s.anchoring.start(); close(back) }() // requests meanwhile are refused; their clients try again
	run(first[half:], record)
	accepted := slices.Collect(maps.Values(valid))

	// Then everything else, shuffled.
	var mixed []op
	for range 120 {
		u := users[rng.IntN(len(users))]
		m := anchorOf(u, newSession())
		mixed = append(mixed, op{"valid", u, body(m), 202, m})
	}
	for range 40 {
		m := accepted[rng.IntN(len(accepted))]
		mixed = append(mixed, op{"again", m.Owner, body(m), 202, m})
	}
	for range 40 {
		orig := accepted[rng.IntN(len(accepted))]
		m := anchorOf(orig.Owner, orig.SessionID)
		never = append(never, txID(m))
		mixed = append(mixed, op{"conflicting", orig.Owner, body(m), 409, m})
	}
	taken := map[string]bool{} // user ‖ session: one anchor of another user's id each
	for range 30 {
		orig := accepted[rng.IntN(len(accepted))]
		u := users[rng.IntN(len(users))]
		if u == orig.Owner || taken[u+"\x00"+orig.SessionID] {
			continue
		}
		taken[u+"\x00"+orig.SessionID] = true
		m := anchorOf(u, orig.SessionID)
		mixed = append(mixed, op{"another user's id", u, body(m), 202, m})
	}
	for i := range 40 {
		u := users[rng.IntN(len(users))]
		m := anchorOf(u, newSession())
		var b []byte
		switch i % 5 {
		case 0:
			m.SessionID = "not-a-uuid"
		case 1:
			m.MerkleRoot = "zz"
		case 2:
			m.Owner = users[(slices.Index(users, u)+1)%len(users)] // someone else's name
		case 3:
			m.EndedAt = "2026-11-30T10:00:00Z" // before it started
		}
		if b = body(m); i%5 == 4 {
			b = append(b[:len(b)-1], []byte(`,"extra":1}`)...)
		}
		never = append(never, txID(m))
		mixed = append(mixed, op{"malformed", u, b, 400, m})
	}
	// Anchors the engine will refuse: the chain gets another anchor of
	// their session first, from outside anchoring's queue.
	for range 6 {
		u := users[rng.IntN(len(users))]
		sid := newSession()
		raw, _ := (&chain.Transaction{Type: chain.TypeSessionAnchor, Anchor: anchorOf(u, sid)}).Encode()
		if _, err := s.client.Submit(context.Background(), [][]byte{raw}); err != nil {
			t.Fatal(err)
		}
		outside[chain.TxID(raw)] = true
		m := anchorOf(u, sid)
		never = append(never, txID(m))
		poisoned = append(poisoned, refused{u, sid})
		mixed = append(mixed, op{"poisoned", u, body(m), 202, m})
	}
	rng.Shuffle(len(mixed), func(i, j int) { mixed[i], mixed[j] = mixed[j], mixed[i] })
	run(mixed, record)

	// Every valid anchor sealed with a receipt that verifies, every
	// poisoned one refused with its reason.
	unsealed := maps.Clone(valid)
	receipts := map[string]string{}
	var miss string // why the last look found one not sealed
	t.Cleanup(func() {
		if len(unsealed) > 0 {
			t.Logf("%d anchors not sealed; the last looked at: %s", len(unsealed), miss)
		}
	})
	testenv.Eventually(t, 90*time.Second, "every valid anchor sealed", func() bool {
		for id, m := range unsealed {
			st, err := getAnchorAs(clients[m.Owner], s.anchoring.url, m.SessionID)
			if err != nil || st.Status != "sealed" || st.TxID != id {
				miss = fmt.Sprintf("%s's anchor of %s (tx %s): %+v %v", m.Owner, m.SessionID, id, st, err)
				return false
			}
			receipts[id] = st.Receipt
			delete(unsealed, id)
		}
		return true
	})
	vs := verifiers(t, s)
	for id, r := range receipts {
		if _, err := chain.VerifyReceipt([]byte(r), vs, chain.Origin("e2e")); err != nil {
			t.Errorf("the receipt of %s: %v", id, err)
		}
	}
	for _, p := range poisoned {
		testenv.Eventually(t, 30*time.Second, "the poisoned anchor refused", func() bool {
			st, err := getAnchorAs(clients[p.user], s.anchoring.url, p.sid)
			return err == nil && st.Status == "refused" && strings.Contains(st.Reason, "already anchored")
		})
	}

	// The chain holds each valid anchor once and nothing that was refused.
	info0, err := s.client.Chain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	a := chain.NewAuditor(chain.Origin("e2e"), nil)
	for h := uint64(1); h <= info0.Height; h++ {
		b, err := s.client.Block(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Next(b); err != nil {
			t.Fatalf("audit: %v", err)
		}
		for _, raw := range b.Transactions {
			count[chain.TxID(raw)]++
		}
	}
	for id, m := range valid {
		if count[id] != 1 {
			t.Errorf("%s's anchor of %s is in the chain %d times", m.Owner, m.SessionID, count[id])
		}
	}
	for id := range outside {
		if count[id] != 1 {
			t.Errorf("the outside anchor %s is in the chain %d times", id, count[id])
		}
	}
	for _, id := range never {
		if count[id] != 0 {
			t.Errorf("transaction %s should never have been sealed", id)
		}
	}
	testenv.Eventually(t, 10*time.Second, "the queue drained", func() bool {
		resp, err := user.Get(s.anchoring.url + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "\nlucid_anchoring_pending 0\n")
	})
	t.Logf("%d anchors sealed once each, %d refused or never sent, %d poisoned anchors refused", len(valid)+len(outside), len(never), len(poisoned))
}

// verifiers are the chain's validator keys, for checking receipts.
func verifiers(t *testing.T, s *stack) note.Verifiers {
	t.Helper()
	info, err := s.client.Chain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	vs, err := chain.Verifiers(info.Validators)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}
