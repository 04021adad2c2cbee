package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// hostile is the stack as `lucidctl up` runs it (mTLS, Consul with ACLs),
// with two ordinary free-tier users: alice, whose data is at stake, and
// mallory, who tries everything a valid token allows.
type hostile struct {
	p              *stackProject
	secrets        map[string]string
	alice, mallory string // their tokens
	gateway        string
	mint           func(sub string, tier auth.Tier) string
}

func (h *hostile) port(service string) int {
	s, _ := catalog.Lookup(service)
	return s.Port + h.p.offset
}

// do sends a request to the gateway with token (none when empty) and
// extra headers, and returns the status and body.
func (h *hostile) do(t *testing.T, method, path, token string, body []byte, headers ...string) (int, string) {
	t.Helper()
	return send(t, http.DefaultClient, method, h.gateway+path, token, body, headers...)
}

func send(t *testing.T, c *http.Client, method, url, token string, body []byte, headers ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sameAnswer fails unless two answers say the same, once the ids they name
// and the request ids are set aside.
func sameAnswer(t *testing.T, what string, code1 int, body1 string, ids1 []string, code2 int, body2 string, ids2 []string) {
	t.Helper()
	if code1 != code2 || servicetest.WithoutIDs(body1, ids1...) != servicetest.WithoutIDs(body2, ids2...) {
		t.Errorf("%s: %d %q; for nothing at all: %d %q", what, code1, body1, code2, body2)
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func sealBody(owner string) []byte {
	sum := sha256.Sum256([]byte(owner + time.Now().String()))
	b, _ := json.Marshal(map[string]string{"owner": owner, "manifest_hash": hex.EncodeToString(sum[:]),
		"started_at": "2026-12-01T10:00:00Z", "ended_at": "2026-12-01T11:00:00Z"})
	return b
}

// TestHostileUser runs, against the real stack through its gateway, every
// attack a valid free-tier token made possible before sessions had owners,
// and the obvious variants; each subtest fails if its hole reopens.
func TestHostileUser(t *testing.T) {
	consul := testenv.Tool(t, "consul", "LUCID_CONSUL_BIN")
	redis := testenv.StartRedisServer(t)
	p := &stackProject{dir: t.TempDir(), offset: 24000}
	if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), []byte("isolation:\n  isolated_dirs: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The free tier is roomy, so the attacks are not cut short by the
	// budget; the premium tier is tight (60 units a minute, a burst of
	// 6), to show what requests cost. Budgets live in a real Redis.
	p.env = append(os.Environ(), "LUCID_BLOCK_INTERVAL=1s", "NO_COLOR=1", "LUCID_STREAMS_PER_USER=2",
		"LUCID_RATE_FREE=100000", "LUCID_RATE_PREMIUM=60", "REDIS_URL=redis://"+redis.Addr+"/0")
	t.Cleanup(func() { p.lucidctl(t, "down") }) // before up: a half-started stack is stopped too
	if out, errOut, code := p.lucidctl(t, "up", "-d", "--lucid", lucidBin, "--consul", consul, p.offsetFlag()); code != 0 {
		t.Fatalf("up: exit %d\n%s\n%s", code, out, errOut)
	}
	secrets, err := envfile.Read(filepath.Join(p.dir, projectconfig.DefaultEnvFile))
	if err != nil {
		t.Fatal(err)
	}
	h := &hostile{p: p, secrets: secrets}
	h.gateway = "http://127.0.0.1:" + strconv.Itoa(h.port("gateway"))
	h.mint = func(sub string, tier auth.Tier) string {
		tok, _, err := auth.Mint([]byte(secrets["JWT_SECRET_KEY"]), auth.MintOptions{Subject: sub, Tier: tier, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	h.alice, h.mallory = h.mint("alice", auth.TierFree), h.mint("mallory", auth.TierFree)

	// Alice's session: two chunks, sealed; another still open.
	sealed, open := randomID(), randomID()
	var aliceChunks []string
	for i, sid := range []string{sealed, sealed, open} {
		data := bytes.Repeat([]byte{byte('a' + i)}, 2048)
		code, body := h.do(t, http.MethodPut, fmt.Sprintf("/api/v1/chunks?session_id=%s&index=%d", sid, i%2), h.alice, data)
		if code != http.StatusCreated {
			t.Fatalf("alice's chunk %d: %d %s", i, code, body)
		}
		sum := sha256.Sum256(data)
		aliceChunks = append(aliceChunks, hex.EncodeToString(sum[:]))
	}
	if code, body := h.do(t, http.MethodPost, "/api/v1/sessions/"+sealed+"/seal", h.alice, sealBody("")); code != http.StatusOK {
		t.Fatalf("alice's seal: %d %s", code, body)
	}

	t.Run("the chain takes anchors only through anchoring", func(t *testing.T) {
		raw, _ := (&chain.Transaction{Type: chain.TypeSessionAnchor, Anchor: &chain.SessionAnchor{SessionID: open, Owner: "mallory",
			ManifestHash: strings.Repeat("a", 64), MerkleRoot: strings.Repeat("b", 64), StartedAt: "2026-12-01T10:00:00Z", EndedAt: "2026-12-01T11:00:00Z"}}).Encode()
		batch := []byte("[" + strings.TrimSuffix(strings.Repeat(string(raw)+",", 1000), ",") + "]")
		for _, path := range []string{"/api/v1/transactions", "/blockchain/api/v1/transactions"} {
			for _, body := range [][]byte{raw, batch} {
				if code, _ := h.do(t, http.MethodPost, path, h.mallory, body); code != http.StatusMethodNotAllowed {
					t.Errorf("mallory POST %s (%d bytes): %d, want 405", path, len(body), code)
				}
			}
		}
		// Nor can a batch go to anchoring: one request is one anchor.
		if code, _ := h.do(t, http.MethodPost, "/api/v1/anchors", h.mallory, batch); code != http.StatusBadRequest && code != http.StatusRequestEntityTooLarge {
			t.Errorf("a batch of 1000 anchors to anchoring: %d, want 400 or 413", code)
		}
	})

	t.Run("another user's session is as if it did not exist", func(t *testing.T) {
		none := randomID()
		missing := strings.Repeat("0", 64)
		for _, tc := range []struct{ method, alices, nothing string }{
			{http.MethodGet, "/api/v1/sessions/" + sealed, "/api/v1/sessions/" + none},
			{http.MethodGet, "/api/v1/sessions/" + sealed + "/proof/0", "/api/v1/sessions/" + none + "/proof/0"},
			{http.MethodGet, "/api/v1/chunks/" + aliceChunks[0], "/api/v1/chunks/" + missing},
			{http.MethodHead, "/api/v1/chunks/" + aliceChunks[0], "/api/v1/chunks/" + missing},
			{http.MethodDelete, "/api/v1/chunks/" + aliceChunks[2], "/api/v1/chunks/" + missing},
			{http.MethodGet, "/api/v1/anchors/" + sealed, "/api/v1/anchors/" + none},
			{http.MethodGet, "/api/v1/chain/anchors/" + sealed, "/api/v1/chain/anchors/" + none},
		} {
			c1, b1 := h.do(t, tc.method, tc.alices, h.mallory, nil)
			c2, b2 := h.do(t, tc.method, tc.nothing, h.mallory, nil)
			sameAnswer(t, "mallory's "+tc.method+" "+tc.alices, c1, b1, []string{sealed, aliceChunks[0], aliceChunks[2]}, c2, b2, []string{none, missing})
			if c1 < 400 {
				t.Errorf("mallory's %s %s succeeded: %d", tc.method, tc.alices, c1)
			}
		}
		if code, body := h.do(t, http.MethodPost, "/api/v1/sessions/"+open+"/seal", h.mallory, sealBody("")); code != http.StatusNotFound {
			t.Errorf("mallory sealing alice's open session: %d %s", code, body)
		}
		// Forged identity headers change nothing: the gateway sets its own.
		if code, _ := h.do(t, http.MethodGet, "/api/v1/sessions/"+sealed, h.mallory, nil,
			"X-Lucid-Sub", "alice", "X-Lucid-Tier", "enterprise", "Lucid-Caller", "gateway 1 00"); code != http.StatusNotFound {
			t.Errorf("mallory claiming to be alice in headers: %d", code)
		}
	})

	t.Run("what mallory stores under alice's ids is hers alone", func(t *testing.T) {
		data := bytes.Repeat([]byte("m"), 2048)
		if code, body := h.do(t, http.MethodPut, "/api/v1/chunks?session_id="+open+"&index=5", h.mallory, data); code != http.StatusCreated {
			t.Fatalf("mallory's chunk in her own session of that id: %d %s", code, body)
		}
		// Sealed as hers, never as alice's, whatever the body says.
		if code, body := h.do(t, http.MethodPost, "/api/v1/sessions/"+open+"/seal", h.mallory, sealBody("alice")); code != http.StatusBadRequest || !strings.Contains(body, "owner") {
			t.Errorf("mallory sealing with owner alice: %d %s", code, body)
		}
		var info struct {
			Chunks []string `json:"chunks"`
			Sealed bool     `json:"sealed"`
		}
		_, body := h.do(t, http.MethodGet, "/api/v1/sessions/"+open, h.alice, nil)
		if err := json.Unmarshal([]byte(body), &info); err != nil || len(info.Chunks) != 1 || info.Chunks[0] != aliceChunks[2] || info.Sealed {
			t.Errorf("alice's open session after mallory: %s", body)
		}
		if code, _ := h.do(t, http.MethodGet, "/api/v1/chunks/"+aliceChunks[2], h.alice, nil); code != http.StatusOK {
			t.Errorf("alice's chunk after mallory's delete: %d", code)
		}
	})

	t.Run("the owner on the chain is who sealed", func(t *testing.T) {
		var st struct {
			Status  string `json:"status"`
			Receipt string `json:"receipt"`
		}
		testenv.Eventually(t, 30*time.Second, "alice's anchor sealed", func() bool {
			_, body := h.do(t, http.MethodGet, "/api/v1/anchors/"+sealed, h.alice, nil)
			return json.Unmarshal([]byte(body), &st) == nil && st.Status == "sealed"
		})
		r, err := chain.ParseReceipt([]byte(st.Receipt))
		if err != nil {
			t.Fatal(err)
		}
		tx, err := chain.DecodeTransaction(r.Tx)
		if err != nil || tx.Anchor == nil || tx.Anchor.Owner != "alice" || tx.Anchor.SessionID != sealed {
			t.Errorf("the anchor on the chain: %+v %v", tx, err)
		}
		// Anchors of mallory's are sealed too: nothing she does stops them.
		sid := randomID()
		body, _ := json.Marshal(chain.SessionAnchor{SessionID: sid, ManifestHash: strings.Repeat("c", 64), MerkleRoot: strings.Repeat("d", 64),
			StartedAt: "2026-12-01T10:00:00Z", EndedAt: "2026-12-01T11:00:00Z"})
		if code, b := h.do(t, http.MethodPost, "/api/v1/anchors", h.mallory, body); code != http.StatusAccepted {
			t.Fatalf("mallory's own anchor: %d %s", code, b)
		}
		body2 := bytes.Replace(body, []byte(strings.Repeat("c", 64)), []byte(strings.Repeat("e", 64)), 1)
		if code, _ := h.do(t, http.MethodPost, "/api/v1/anchors", h.mallory, body2); code != http.StatusConflict {
			t.Errorf("mallory's second manifest for her session: %d, want 409", code)
		}
		testenv.Eventually(t, 30*time.Second, "mallory's anchor sealed", func() bool {
			_, b := h.do(t, http.MethodGet, "/api/v1/anchors/"+sid, h.mallory, nil)
			return strings.Contains(b, `"status":"sealed"`)
		})
	})

	t.Run("long-lived work is bounded per user", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var mu sync.Mutex
		codes := map[int]int{}
		var wg sync.WaitGroup
		opened := make(chan struct{}, 4)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.gateway+"/blockchain/api/v1/blocks/stream?from=1", nil)
				req.Header.Set("Authorization", "Bearer "+h.mallory)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					opened <- struct{}{}
					return
				}
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
				opened <- struct{}{}
				_, _ = io.Copy(io.Discard, resp.Body) // holds the stream until cancel
				resp.Body.Close()
			}()
		}
		for range 4 {
			<-opened
		}
		mu.Lock()
		if codes[http.StatusOK] != 2 || codes[http.StatusTooManyRequests] != 2 {
			t.Errorf("mallory's four block streams: %v, want two open and two refused (429)", codes)
		}
		mu.Unlock()
		// Alice's stream is hers to open meanwhile.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.gateway+"/blockchain/api/v1/blocks/stream?from=1", nil)
		req.Header.Set("Authorization", "Bearer "+h.alice)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("alice's stream while mallory holds hers: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		cancel()
		wg.Wait()
	})

	t.Run("a request costs its work", func(t *testing.T) {
		carol := h.mint("carol", auth.TierPremium)
		remaining := func(method, path string, body []byte) (int, int) {
			t.Helper()
			req, _ := http.NewRequest(method, h.gateway+path, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+carol)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			n, _ := strconv.Atoi(resp.Header.Get("Ratelimit-Remaining"))
			return resp.StatusCode, n
		}
		code, before := remaining(http.MethodGet, "/api/v1/chain/status", nil)
		if code != http.StatusOK || before < 5 {
			t.Fatalf("carol's first request: %d, %d left", code, before)
		}
		// 7 MiB of body: a unit per started 2 MiB (a unit a second comes
		// back meanwhile, at most).
		code, left := remaining(http.MethodPut, "/api/v1/chunks", bytes.Repeat([]byte("c"), 7<<20))
		if code != http.StatusCreated || left > before-4+1 {
			t.Errorf("a 7 MiB upload: %d, %d left of %d, want 201 and 4 units spent", code, left, before)
		}
		if code, _ := remaining(http.MethodPut, "/api/v1/chunks", bytes.Repeat([]byte("d"), 7<<20)); code != http.StatusTooManyRequests {
			t.Errorf("a second 7 MiB upload with %d units left: %d, want 429", left, code)
		}
	})

	t.Run("a failing Redis leaves every limit in place", func(t *testing.T) {
		redis.Stop()
		dave := h.mint("dave", auth.TierPremium)
		limited := 0
		for range 12 {
			if code, _ := h.do(t, http.MethodGet, "/api/v1/chain/status", dave, nil); code == http.StatusTooManyRequests {
				limited++
			}
		}
		if limited == 0 {
			t.Error("with Redis gone, twelve requests of a six-request burst all passed")
		}
		code, body := h.do(t, http.MethodGet, "/metrics", "", nil)
		if !strings.Contains(body, "lucid_gateway_ratelimit_fallback_active 1") {
			t.Errorf("the gateway's metrics do not say it is on its own budget: %d\n%s", code, body)
		}
	})

	t.Run("operator endpoints are out of users' reach", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{
			{http.MethodPost, "/blockchain/api/v1/consensus/voters"},
			{http.MethodDelete, "/blockchain/api/v1/consensus/voters/lucid-local"},
			{http.MethodPost, "/api/v1/compact"},
			{http.MethodPost, "/api/v1/verify"},
			{http.MethodGet, "/api/v1/status"},
			// Backups and the restore fence: the engine is routed under
			// /blockchain/, so these reach it; only the operator may.
			{http.MethodPost, "/blockchain/api/v1/snapshots"},
			{http.MethodGet, "/blockchain/api/v1/snapshots/x/files/chain.db"},
			{http.MethodDelete, "/blockchain/api/v1/snapshots/x"},
			{http.MethodGet, "/blockchain/api/v1/fence"},
			{http.MethodPost, "/blockchain/api/v1/fence/lift"},
			{http.MethodPost, "/blockchain/api/v1/fence/blocks"},
		} {
			if code, _ := h.do(t, tc.method, tc.path, h.mallory, nil); code < 400 {
				t.Errorf("mallory %s %s: %d", tc.method, tc.path, code)
			}
		}
	})

	t.Run("the services answer only the stack", func(t *testing.T) {
		insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		for _, svc := range []string{"engine", "anchoring", "blocks", "datachain"} {
			base := "https://127.0.0.1:" + strconv.Itoa(h.port(svc))
			code, _ := send(t, insecure, http.MethodGet, base+"/api/v1/sessions/"+sealed, "", nil, "X-Lucid-Sub", "alice", "X-Lucid-Tier", "free")
			if code != http.StatusForbidden {
				t.Errorf("%s, called directly as alice without a mesh certificate: %d, want 403", svc, code)
			}
			if code, _ := send(t, insecure, http.MethodGet, base+"/health", "", nil); code != http.StatusOK {
				t.Errorf("%s's /health without a certificate: %d", svc, code)
			}
		}
	})

	t.Run("a service's mesh credential yields only its own identity", func(t *testing.T) {
		engineToken := meshapi.EnrolmentToken(secrets["LUCID_MESH_TOKEN"], "engine")
		insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		mesh := "https://127.0.0.1:" + strconv.Itoa(h.port("mesh"))
		csr, _ := json.Marshal(meshapi.IssueRequest{CSR: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"})
		for _, svc := range []string{"gateway", "datachain", "mesh"} {
			if code, _ := send(t, insecure, http.MethodPost, mesh+"/certificates/"+svc, engineToken, csr); code != http.StatusUnauthorized && code != http.StatusForbidden {
				t.Errorf("the engine's token asking for %s's certificate: %d, want 401 or 403", svc, code)
			}
		}
		if code, _ := send(t, insecure, http.MethodPost, mesh+"/ca/rotate", engineToken, nil); code != http.StatusUnauthorized && code != http.StatusForbidden {
			t.Errorf("the engine's token rotating the CA: %d", code)
		}
	})

	t.Run("Consul answers nobody without a token", func(t *testing.T) {
		consulURL := "http://127.0.0.1:" + strconv.Itoa(8500+p.offset)
		code, body := send(t, http.DefaultClient, http.MethodGet, consulURL+"/v1/catalog/services", "", nil)
		if code == http.StatusOK && strings.Contains(body, "engine") {
			t.Errorf("anonymous catalog read: %d %s", code, body)
		}
		reg := []byte(`{"Name":"evil","Check":{"HTTP":"http://169.254.169.254/","Interval":"1s"}}`)
		if code, _ := send(t, http.DefaultClient, http.MethodPut, consulURL+"/v1/agent/service/register", "", reg); code == http.StatusOK {
			t.Error("an anonymous registration was taken")
		}
		_, gatewayToken := meshapi.ConsulToken(secrets["CONSUL_HTTP_TOKEN"], "gateway")
		if code, _ := send(t, http.DefaultClient, http.MethodPut, consulURL+"/v1/agent/service/register", "", reg, "X-Consul-Token", gatewayToken); code == http.StatusOK {
			t.Error("the gateway's token registered a service")
		}
		if code, body := send(t, http.DefaultClient, http.MethodGet, consulURL+"/v1/health/service/engine?passing=1", "", nil, "X-Consul-Token", gatewayToken); code != http.StatusOK || !strings.Contains(body, "engine") {
			t.Errorf("the gateway's token reading the engine's instances: %d %s", code, body)
		}
	})

	t.Run("the gateway's public endpoints give nothing away", func(t *testing.T) {
		for _, path := range []string{"/ready", "/metrics", "/health"} {
			code, body := h.do(t, http.MethodGet, path, "", nil)
			if code >= 500 && path != "/ready" {
				t.Errorf("%s: %d\n%s", path, code, body)
			}
			for _, leak := range []string{"127.0.0.1:", "https://", "lucid-", "dial tcp", "connection refused"} {
				if strings.Contains(body, leak) {
					t.Errorf("the gateway's public %s shows %q", path, leak)
				}
			}
		}
	})
}
