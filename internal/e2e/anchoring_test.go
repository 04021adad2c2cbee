package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	anc := newProc(t, "anchoring", "BLOCKCHAIN_ENGINE_URL="+eng.url, "LUCID_ANCHOR_RESUBMIT=2s")
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
	Height        uint64  `json:"height"`
	Index         *uint64 `json:"index"`
	Confirmations uint64  `json:"confirmations"`
	Receipt       string  `json:"receipt"`
}

func postAnchor(url string, body []byte) (int, anchorStatus, string, error) {
	resp, err := user.Post(url+"/api/v1/anchors", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, anchorStatus{}, "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var st anchorStatus
	_ = json.Unmarshal(raw, &st)
	return resp.StatusCode, st, string(raw), nil
}

func getAnchor(url, sid string) (anchorStatus, error) {
	resp, err := user.Get(url + "/api/v1/anchors/" + sid)
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
	var next atomic.Int64
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1))
				code, st, _, err := postAnchor(s.anchoring.url, manifest(i))
				if err == nil && code == 202 {
					acked.Store(st.SessionID, st.TxID)
				} else {
					time.Sleep(20 * time.Millisecond) // the service is down
				}
			}
		}()
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
		time.Sleep(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
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
	time.Sleep(time.Second)
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
		for {
			st, err := getAnchor(s.anchoring.url, sid)
			if err == nil && st.Status == "sealed" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("anchor of session %s acknowledged but not sealed: %+v %v", sid, st, err)
			}
			time.Sleep(100 * time.Millisecond)
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
