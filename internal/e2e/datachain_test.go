package e2e

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/logtree"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

func putChunk(url, session string, index int, data []byte) (string, int, error) {
	u := url + "/api/v1/chunks"
	if session != "" {
		u += fmt.Sprintf("?session_id=%s&index=%d", session, index)
	}
	req, _ := http.NewRequest(http.MethodPut, u, bytes.NewReader(data))
	resp, err := user.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var out struct{ ID string }
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out.ID, resp.StatusCode, nil
}

func randomChunk(n int) []byte {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return b
}

// TestChunksSealedIntoTheChain: chunks → seal → anchor sealed in a block;
// the receipt's merkle_root is the session root, and a chunk's proof plus
// the receipt prove the chunk was anchored.
func TestChunksSealedIntoTheChain(t *testing.T) {
	s := startStack(t)
	dc := newProc(t, "datachain", "LUCID_ANCHORING_URL="+s.anchoring.url, "ENCRYPTION_KEY=an-e2e-encryption-key-of-enough-length")
	dc.start()
	const sid = "11111111-2222-4333-8444-555555555555"
	var ids []string
	for i := 0; i < 5; i++ {
		id, code, err := putChunk(dc.url, sid, i, randomChunk(4096+i))
		if err != nil || code != 201 {
			t.Fatalf("put %d: %d %v", i, code, err)
		}
		ids = append(ids, id)
	}
	body := `{"manifest_hash":"` + hex.EncodeToString(make([]byte, 32)) + `","started_at":"2026-11-26T09:00:00Z","ended_at":"2026-11-26T09:30:00Z"}`
	resp, err := user.Post(dc.url+"/api/v1/sessions/"+sid+"/seal", "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	var sealed struct {
		Root       string `json:"merkle_root"`
		ChunkCount int    `json:"chunk_count"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&sealed)
	resp.Body.Close()
	if resp.StatusCode != 200 || sealed.ChunkCount != 5 {
		t.Fatalf("seal = %d %+v", resp.StatusCode, sealed)
	}
	if _, code, _ := putChunk(dc.url, sid, 9, randomChunk(2000)); code != 409 {
		t.Errorf("chunk after seal = %d, want 409", code)
	}

	var receipt string
	testenv.Eventually(t, 20*time.Second, "anchor sealed", func() bool {
		st, err := getAnchor(s.anchoring.url, sid)
		receipt = st.Receipt
		return err == nil && st.Status == "sealed" && st.Receipt != ""
	})
	info, _ := s.client.Chain(context.Background())
	vs, _ := chain.Verifiers(info.Validators)
	v, err := chain.VerifyReceipt([]byte(receipt), vs, chain.Origin("e2e"))
	if err != nil {
		t.Fatal(err)
	}
	if v.Tx.Anchor.MerkleRoot != sealed.Root || v.Tx.Anchor.ChunkCount != 5 {
		t.Fatalf("anchored root %s, session root %s", v.Tx.Anchor.MerkleRoot, sealed.Root)
	}
	// Chunk 3's proof leads to the anchored root.
	var p struct {
		ChunkID  string `json:"chunk_id"`
		TreeSize uint64 `json:"tree_size"`
		Proof    []string
	}
	getJSON(t, dc.url+"/api/v1/sessions/"+sid+"/proof/3", &p)
	proof := make([][]byte, len(p.Proof))
	for i, h := range p.Proof {
		proof[i], _ = hex.DecodeString(h)
	}
	leaf, _ := hex.DecodeString(ids[3])
	root, _ := hex.DecodeString(v.Tx.Anchor.MerkleRoot)
	if p.ChunkID != ids[3] || logtree.VerifyInclusion(3, p.TreeSize, logtree.Hasher.HashLeaf(leaf), proof, root) != nil {
		t.Errorf("chunk proof does not lead to the anchored root")
	}
}

// TestKillNineDuringIngest kills the data chain with SIGKILL during heavy
// ingest into sessions, encrypted, with packs rotating every 4 MiB,
// repeatedly; every chunk whose PUT succeeded reads back intact and stays
// in its session.
func TestKillNineDuringIngest(t *testing.T) {
	// The tests' user is of the free tier, and this load may store more
	// than its quota (which has tests of its own): none here.
	dc := newProc(t, "datachain", "LUCID_ANCHORING_URL=http://127.0.0.1:1", "LUCID_PACK_MAX_BYTES=4194304",
		"ENCRYPTION_KEY=an-e2e-encryption-key-of-enough-length", "LUCID_QUOTA_FREE_BYTES=0")
	dc.start()
	var mu sync.Mutex
	acked := map[string][]byte{}
	members := map[string]map[int]string{} // session → index → chunk id
	var stop atomic.Bool
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := 0; w < 6; w++ {
		wg.Add(1)
		session := fmt.Sprintf("00000000-0000-4000-8000-%012d", w)
		rng := rand.New(rand.NewPCG(3, uint64(w))) // a rand.Rand is not safe for several goroutines
		go func() {
			defer wg.Done()
			retry := time.NewTicker(20 * time.Millisecond)
			defer retry.Stop()
			for !stop.Load() {
				data := randomChunk(64<<10 + rng.IntN(256<<10))
				idx := int(seq.Add(1))
				id, code, err := putChunk(dc.url, session, idx, data)
				if err == nil && code == 201 {
					mu.Lock()
					acked[id] = data
					if members[session] == nil {
						members[session] = map[int]string{}
					}
					members[session][idx] = id
					mu.Unlock()
				} else {
					<-retry.C // the service is down: try again at the next tick
				}
			}
		}()
	}
	// moreAcked waits until n more chunks are acknowledged: the service,
	// restarted or not, is storing again.
	moreAcked := func(n int) {
		t.Helper()
		mu.Lock()
		want := len(acked) + n
		mu.Unlock()
		testenv.Eventually(t, 60*time.Second, fmt.Sprintf("%d more chunks acknowledged", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= want
		})
	}
	for round := 0; round < 3; round++ {
		moreAcked(3 + round*2) // stretches of load of different lengths between kills
		dc.kill()
		dc.start()
	}
	moreAcked(3)
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(acked) < 20 {
		t.Fatalf("only %d chunks acknowledged", len(acked))
	}
	for id, want := range acked {
		resp, err := user.Get(dc.url + "/api/v1/chunks/" + id)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, want) {
			t.Fatalf("acknowledged chunk %s: status %d, %d bytes", id, resp.StatusCode, len(got))
		}
	}
	for session, m := range members {
		var info struct {
			Chunks []string `json:"chunks"`
		}
		getJSON(t, dc.url+"/api/v1/sessions/"+session, &info)
		have := map[string]bool{}
		for _, id := range info.Chunks {
			have[id] = true
		}
		for idx, id := range m {
			if !have[id] {
				t.Fatalf("session %s lost acknowledged chunk %d (%s)", session, idx, id)
			}
		}
	}
	var rep struct {
		Chunks  int
		Damaged []any
	}
	resp, err := servicetest.Operator().Post(dc.url+"/api/v1/verify", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if len(rep.Damaged) != 0 || rep.Chunks < len(acked) {
		t.Errorf("scrub after the kills: %+v (acked %d)", rep, len(acked))
	}
	t.Logf("%d chunks acknowledged across 3 kills, all intact", len(acked))
}

// TestSessionPush runs `lucidctl session push --seal` on a directory of
// chunk files against the real services, through the gateway with a
// user's token: the session and its anchor are that user's.
func TestSessionPush(t *testing.T) {
	s := startStack(t)
	dc := newProc(t, "datachain", "LUCID_ANCHORING_URL="+s.anchoring.url)
	dc.start()
	const secret = "an-e2e-jwt-secret-of-enough-length-0123456789"
	gw := newProc(t, "gateway", "JWT_SECRET_KEY="+secret, "LUCID_DATACHAIN_URL="+dc.url, "LUCID_ANCHORING_URL="+s.anchoring.url,
		"LUCID_ENGINE_URL="+s.engine.url, "LUCID_BLOCKS_URL=http://127.0.0.1:1")
	gw.start()
	token, _, err := auth.Mint([]byte(secret), auth.MintOptions{Subject: owner, Tier: auth.TierEnterprise, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for i := 0; i < 12; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("chunk-%03d.bin", i)), randomChunk(2048+i*100), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const sid = "99999999-2222-4333-8444-555555555555"
	cmd := exec.Command(lucidctlBin, "session", "push", dir, "--url", gw.url, "--token", token, "--session-id", sid, "--seal", "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr.String())
	}
	var res struct {
		Chunks int
		Sealed struct {
			Root       string `json:"merkle_root"`
			ChunkCount int    `json:"chunk_count"`
		}
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout.String())
	}
	if res.Chunks != 12 || res.Sealed.ChunkCount != 12 || len(res.Sealed.Root) != 64 {
		t.Fatalf("push result = %+v", res)
	}
	if !strings.Contains(stderr.String(), "pushed 12/12 chunks") {
		t.Errorf("no progress on stderr: %q", stderr.String())
	}
	testenv.Eventually(t, 20*time.Second, "anchor sealed", func() bool {
		st, err := getAnchor(s.anchoring.url, sid)
		return err == nil && st.Status == "sealed"
	})
}
