package datachain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/packstore"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

const sid = "11111111-2222-4333-8444-555555555555"

func start(t testing.TB) (*App, *httptest.Server, string) {
	t.Helper()
	return startWith(t, nil)
}

// startWith starts the service with env on top of the tests' own.
func startWith(t testing.TB, env map[string]string) (*App, *httptest.Server, string) {
	t.Helper()
	app := New().(*App)
	vars := map[string]string{"LUCID_CHUNK_MAX_BYTES": "65536"}
	maps.Copy(vars, env)
	r := envconfig.New(envconfig.Map(vars))
	app.Configure(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv := service.New(servicetest.Config("datachain", dir), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); cancel(); _ = app.Close() })
	return app, hs, dir
}

// owner is the user the tests act for, through the gateway's identity.
const owner = "alice@example.org"

var (
	alice    = servicetest.User(owner)
	operator = servicetest.Operator()
)

// do sends a request for alice.
func do(t *testing.T, method, url, ctype string, body []byte) (int, string) {
	t.Helper()
	return doAs(t, alice, method, url, ctype, body)
}

func doAs(t *testing.T, c *http.Client, method, url, ctype string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestChunkAPI(t *testing.T) {
	_, hs, _ := start(t)
	chunk := bytes.Repeat([]byte("c"), 2048)
	tests := []struct {
		name   string
		query  string
		body   []byte
		status int
		want   string
	}{
		{"stored", "?session_id=" + sid + "&index=0", chunk, 201, `"id"`},
		{"again is fine", "?session_id=" + sid + "&index=0", chunk, 201, `"id"`},
		{"too small", "", []byte("tiny"), 400, "at least 1024"},
		{"too large", "", bytes.Repeat([]byte("x"), 70000), 413, "at most 65536"},
		{"bad session", "?session_id=nope&index=1", chunk, 400, "UUID"},
		{"index alone", "?index=1", chunk, 400, "go together"},
		{"bad index", "?session_id=" + sid + "&index=-1", chunk, 400, "whole number"},
		{"index taken", "?session_id=" + sid + "&index=0", bytes.Repeat([]byte("d"), 2048), 409, "holds"},
	}
	for _, tt := range tests {
		code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks"+tt.query, "application/octet-stream", tt.body)
		if code != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("%s: %d %s; want %d with %q", tt.name, code, body, tt.status, tt.want)
		}
	}
	// Multipart upload.
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	_ = mw.WriteField("session_id", sid)
	_ = mw.WriteField("index", "1")
	fw, _ := mw.CreateFormFile("chunk", "c1")
	_, _ = fw.Write(bytes.Repeat([]byte("m"), 3000))
	_ = mw.Close() // into a bytes.Buffer, which cannot fail
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", mw.FormDataContentType(), mp.Bytes()); code != 201 {
		t.Errorf("multipart: %d %s", code, body)
	}
	id := packstore.ID(chunk)
	if code, body := do(t, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 200 || body != string(chunk) {
		t.Errorf("get: %d", code)
	}
	if code, _ := do(t, http.MethodHead, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 200 {
		t.Errorf("head: %d", code)
	}
	if code, _ := do(t, http.MethodHead, hs.URL+"/api/v1/chunks/"+strings.Repeat("0", 64), "", nil); code != 404 {
		t.Errorf("head of a missing chunk: %d", code)
	}
	var sess SessionInfo
	_, body := do(t, http.MethodGet, hs.URL+"/api/v1/sessions/"+sid, "", nil)
	_ = json.Unmarshal([]byte(body), &sess)
	if len(sess.ChunkIDs) != 2 || sess.ChunkIDs[0] != id || len(sess.Root) != 64 {
		t.Errorf("session = %+v", sess)
	}
	if code, body := do(t, http.MethodGet, hs.URL+"/api/v1/sessions/00000000-0000-4000-8000-000000000000", "", nil); code != 404 || !strings.Contains(body, "no session") {
		t.Errorf("unknown session: %d %s", code, body)
	}
	if code, _ := do(t, http.MethodGet, hs.URL+"/api/v1/sessions/"+sid+"/proof/2", "", nil); code != 404 {
		t.Errorf("proof beyond the session: %d", code)
	}
	if code, body := do(t, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", []byte(`{}`)); code != 400 || !strings.Contains(body, "manifest_hash") {
		t.Errorf("seal with a bad manifest: %d %s", code, body)
	}
	// A time padded with 16,000 digits parses, but would make a
	// transaction the engine refuses after the seal froze the session.
	padded := []byte(`{"manifest_hash":"` + strings.Repeat("a", 64) + `","started_at":"2026-11-26T09:00:00.` + strings.Repeat("0", 16000) + `Z","ended_at":"2026-11-26T10:00:00Z"}`)
	if code, body := do(t, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", padded); code != 400 || !strings.Contains(body, "started_at") {
		t.Errorf("seal with a padded time: %d %.300s", code, body)
	}
	// The invalid seals did not freeze the session.
	if code, _ := do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=2", "", bytes.Repeat([]byte("e"), 2048)); code != 201 {
		t.Errorf("the session was frozen by an invalid seal: %d", code)
	}
}

func TestDamagedChunkIsNotServed(t *testing.T) {
	app, hs, dir := start(t)
	chunk := bytes.Repeat([]byte("z"), 4096)
	do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", chunk)
	id := packstore.ID(chunk)
	loc, _ := app.store.Locate(owner, id)
	pack := filepath.Join(dir, "chunks", "packs", "pack-000001.dat")
	f, err := os.OpenFile(pack, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'Z'}, loc.Offset+100); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	code, body := do(t, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil)
	if code != 500 || !strings.Contains(body, "LUCID_ERR_5201") || !strings.Contains(body, "damaged") || strings.Contains(body, "zzzz") {
		t.Errorf("damaged chunk: %d %s", code, body)
	}
	_, body = doAs(t, operator, http.MethodPost, hs.URL+"/api/v1/verify", "", nil)
	if !strings.Contains(body, id) || !strings.Contains(body, sid) || !strings.Contains(body, owner) {
		t.Errorf("scrub report does not name the chunk, its owner and its session: %s", body)
	}
}

// TestTheDiskReserveIsKept: a chunk that would leave the disk with less
// free than the reserve (the chain engine shares the card, and stops when
// it cannot store a block) is refused, 507, saying so without the figures;
// with room again it is stored, and once stored it may be sent again, at
// the index of a session it holds too; put at a new index, or in a new
// session, it grows the index, and is refused.
func TestTheDiskReserveIsKept(t *testing.T) {
	app, hs, _ := start(t)
	free := uint64(app.reserve + 100)
	app.diskFree = func() (uint64, error) { return free, nil }
	chunk := []byte(strings.Repeat("r", 4096))
	code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk)
	if code != http.StatusInsufficientStorage || !strings.Contains(body, CodeDiskFull) || strings.Contains(body, "reserve") {
		t.Errorf("a chunk into the reserve: %d %s", code, body)
	}
	free = app.reserve + 1<<20
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk); code != http.StatusCreated {
		t.Errorf("a chunk with room: %d %s", code, body)
	}
	session := uuid.NewString()
	at := func(index int) string {
		return fmt.Sprintf("%s/api/v1/chunks?session_id=%s&index=%d", hs.URL, session, index)
	}
	if code, body := do(t, http.MethodPut, at(0), "", chunk); code != http.StatusCreated {
		t.Errorf("the chunk put in a session, with room: %d %s", code, body)
	}
	// Full again: the same bytes (a retried push, a repair) take no room.
	free = 0
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk); code != http.StatusCreated {
		t.Errorf("a chunk already stored, on a full disk: %d %s", code, body)
	}
	if code, body := do(t, http.MethodPut, at(0), "", chunk); code != http.StatusCreated {
		t.Errorf("a retried push of a session's chunk, on a full disk: %d %s", code, body)
	}
	other := uuid.NewString()
	for _, u := range []string{at(1), strings.Replace(at(0), session, other, 1)} {
		if code, body := do(t, http.MethodPut, u, "", chunk); code != http.StatusInsufficientStorage || !strings.Contains(body, CodeDiskFull) {
			t.Errorf("a stored chunk at a new index, on a full disk (%s): %d %s", u, code, body)
		}
	}
	if sess, ids, err := app.store.SessionChunks(owner, session); err != nil || len(ids) != 1 || sess.Chunks != 1 {
		t.Errorf("session after the refusals: %+v %v %v", sess, ids, err)
	}
	if _, err := app.store.Session(owner, other); !errors.Is(err, packstore.ErrNotFound) {
		t.Errorf("the new session was made on a full disk: %v", err)
	}
}

// TestSealRetryAndDelete: a seal whose anchoring call fails leaves the
// session sealed and says to retry; the retry (and a repeated push of the
// same chunks) succeeds once anchoring answers. DELETE refuses a sealed
// session's chunk and removes a free one.
func TestSealRetryAndDelete(t *testing.T) {
	var up, limited atomic.Bool
	var actedFor atomic.Value
	anchoring := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get(service.HeaderCaller), "datachain ") {
			actedFor.Store(r.Header.Get(service.HeaderSub))
		}
		switch {
		case limited.Load():
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"code":"LUCID_ERR_3001","message":"1000 new anchors a day is what your tier may submit here, and today's are used; submit again after 2026-12-08T00:00:00Z"}}`)
			return
		case !up.Load():
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"session_id":"`+sid+`","tx_id":"abc","status":"pending"}`)
	}))
	defer anchoring.Close()
	app := New().(*App)
	r := envconfig.New(envconfig.Map(map[string]string{"LUCID_ANCHORING_URL": anchoring.URL}))
	app.Configure(r)
	srv := service.New(servicetest.Config("datachain", t.TempDir()), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	if err := app.Provision(ctx, srv); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer func() { hs.Close(); cancel(); _ = app.Close() }()

	chunk := bytes.Repeat([]byte("s"), 2048)
	do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", chunk)
	seal := []byte(`{"manifest_hash":"` + strings.Repeat("a", 64) + `","started_at":"2026-11-26T09:00:00Z","ended_at":"2026-11-26T10:00:00Z"}`)
	if code, body := do(t, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", seal); code != 502 || !strings.Contains(body, "seal again") {
		t.Fatalf("seal with anchoring down: %d %s", code, body)
	}
	// A repeated push of the same chunk into the now sealed session is fine.
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", chunk); code != 201 {
		t.Errorf("repeated push after seal: %d %s", code, body)
	}
	// Anchoring refuses the user's anchor for today: the user is told so,
	// and when to seal again.
	limited.Store(true)
	req, _ := http.NewRequest(http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", bytes.NewReader(seal))
	req.Header.Set("Content-Type", "application/json")
	resp, err := alice.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	refusal, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "3600" || !strings.Contains(string(refusal), "submit again after 2026-12-08T00:00:00Z; seal again then") {
		t.Errorf("seal past the day's anchors: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), refusal)
	}
	limited.Store(false)
	up.Store(true)
	if code, body := do(t, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", seal); code != 200 || !strings.Contains(body, `"tx_id":"abc"`) {
		t.Fatalf("seal retry: %d %s", code, body)
	}
	if got, _ := actedFor.Load().(string); got != owner {
		t.Errorf("the data chain anchored for %q, want the session's owner %q", got, owner)
	}
	var info SessionInfo
	_, body := do(t, http.MethodGet, hs.URL+"/api/v1/sessions/"+sid, "", nil)
	_ = json.Unmarshal([]byte(body), &info)
	if !info.Sealed || info.Anchor != "abc" {
		t.Errorf("session after seal = %+v", info)
	}
	id := packstore.ID(chunk)
	if code, _ := do(t, http.MethodDelete, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 409 {
		t.Errorf("delete of a sealed session's chunk: %d", code)
	}
	free := bytes.Repeat([]byte("f"), 2048)
	do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", free)
	if code, _ := do(t, http.MethodDelete, hs.URL+"/api/v1/chunks/"+packstore.ID(free), "", nil); code != 204 {
		t.Errorf("delete of a free chunk: %d", code)
	}
	var st Status
	_, body = doAs(t, operator, http.MethodGet, hs.URL+"/api/v1/status", "", nil)
	_ = json.Unmarshal([]byte(body), &st)
	if st.Chunks != 1 || st.Sessions != 1 || st.DeadBytes == 0 {
		t.Errorf("status = %+v", st)
	}
}

// TestSessionsBelongToTheirOwner: a chunk or session alice stored is, to
// mallory, exactly what something that does not exist is; what mallory
// stores under the same ids is her own; the owner on the chain is who
// seals; only the operator scrubs, compacts, reads the status and deletes
// any owner's chunk; and nobody but a Lucid service gets in at all.
func TestSessionsBelongToTheirOwner(t *testing.T) {
	_, hs, _ := start(t)
	mallory := servicetest.User("mallory")
	data := bytes.Repeat([]byte("a"), 2048)
	id := packstore.ID(data)
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", data); code != 201 {
		t.Fatalf("alice's put: %d %s", code, body)
	}
	missing := strings.Repeat("0", 64)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/chunks/%s"},
		{http.MethodHead, "/api/v1/chunks/%s"},
		{http.MethodDelete, "/api/v1/chunks/%s"},
		{http.MethodGet, "/api/v1/sessions/" + sid + "%.0s"},
		{http.MethodGet, "/api/v1/sessions/" + sid + "/proof/0%.0s"},
	} {
		theirs, theirsBody := doAs(t, mallory, tc.method, hs.URL+fmt.Sprintf(tc.path, id), "", nil)
		none, noneBody := doAs(t, mallory, tc.method, hs.URL+fmt.Sprintf(strings.ReplaceAll(tc.path, sid, "00000000-0000-4000-8000-000000000000"), missing), "", nil)
		if theirs != 404 || theirs != none || servicetest.WithoutIDs(theirsBody, id, sid) != servicetest.WithoutIDs(noneBody, missing, "00000000-0000-4000-8000-000000000000") {
			t.Errorf("mallory's %s %s: %d %q; for nothing: %d %q", tc.method, tc.path, theirs, theirsBody, none, noneBody)
		}
	}
	sealBody := []byte(`{"manifest_hash":"` + strings.Repeat("a", 64) + `","started_at":"2026-11-26T09:00:00Z","ended_at":"2026-11-26T10:00:00Z"}`)
	if code, body := doAs(t, mallory, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", sealBody); code != 404 {
		t.Errorf("mallory sealing alice's session: %d %s", code, body)
	}
	// The same bytes, the same session id: mallory's own, answered as for
	// anything new.
	if code, body := doAs(t, mallory, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", data); code != 201 || !strings.Contains(body, id) {
		t.Errorf("mallory's put of the same bytes: %d %s", code, body)
	}
	if code, _ := doAs(t, mallory, http.MethodDelete, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 204 {
		t.Errorf("mallory deleting her own copy: %d", code)
	}
	if code, _ := do(t, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 200 {
		t.Errorf("alice's chunk after mallory deleted hers: %d", code)
	}
	// Sealing names the sealer, never the body's owner.
	withOwner := []byte(`{"owner":"mallory","manifest_hash":"` + strings.Repeat("a", 64) + `","started_at":"2026-11-26T09:00:00Z","ended_at":"2026-11-26T10:00:00Z"}`)
	if code, body := do(t, http.MethodPost, hs.URL+"/api/v1/sessions/"+sid+"/seal", "application/json", withOwner); code != 400 || !strings.Contains(body, "owner") {
		t.Errorf("alice sealing with owner mallory: %d %s", code, body)
	}
	// The operator's endpoints refuse users; the operator deletes any
	// owner's chunk by naming the owner.
	for _, path := range []string{"/api/v1/verify", "/api/v1/compact"} {
		if code, _ := do(t, http.MethodPost, hs.URL+path, "", nil); code != 403 {
			t.Errorf("a user's POST %s: %d, want 403", path, code)
		}
	}
	if code, _ := do(t, http.MethodGet, hs.URL+"/api/v1/status", "", nil); code != 403 {
		t.Errorf("a user's status: %d, want 403", code)
	}
	if code, _ := doAs(t, operator, http.MethodPost, hs.URL+"/api/v1/compact", "", nil); code != 200 {
		t.Errorf("the operator's compaction: %d", code)
	}
	if code, _ := doAs(t, operator, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 401 {
		t.Errorf("the operator reading a user's chunk: %d, want 401 (not a user)", code)
	}
	// Nobody known: no signature, a forged one, a service acting for
	// nobody, a service that may not act for users.
	forged := &http.Client{Transport: &servicetest.Transport{Caller: "gateway", Principal: &service.Principal{Subject: "mallory"}}}
	for name, c := range map[string]*http.Client{"unsigned": http.DefaultClient, "signed, with a malformed principal": forged} {
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/api/v1/chunks/"+id, nil)
		req.Header.Set(service.HeaderSub, owner)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("%s request claiming to be alice: %d, want 403", name, resp.StatusCode)
		}
	}
	blocks := &http.Client{Transport: &servicetest.Transport{Caller: "blocks", Principal: &service.Principal{Subject: owner, Tier: "free"}}}
	if code, _ := doAs(t, blocks, http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 403 {
		t.Errorf("the block manager (which may not call the data chain) claiming alice: %d, want 403", code)
	}
	if code, _ := doAs(t, servicetest.Client("gateway"), http.MethodGet, hs.URL+"/api/v1/chunks/"+id, "", nil); code != 401 {
		t.Errorf("the gateway acting for nobody: %d, want 401", code)
	}
}

// TestAUsersQuotaIsKept: a free user's new chunks stop at its tier's
// quota with 507 LUCID_ERR_5204, saying what it uses; a chunk it stored
// already is still taken; a premium user is held to its own tier's
// quota; deleting a chunk makes room; the refusal is counted.
func TestAUsersQuotaIsKept(t *testing.T) {
	// Two 4 KiB chunks, with their records' headers, fit; a third does not.
	_, hs, _ := startWith(t, map[string]string{"LUCID_QUOTA_FREE_BYTES": "10000"})
	chunk := func(i int) []byte { return []byte(strings.Repeat(string(rune('a'+i)), 4096)) }
	var ids []string
	for i := range 2 {
		code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk(i))
		if code != http.StatusCreated {
			t.Fatalf("chunk %d within the quota: %d %s", i, code, body)
		}
		var out ChunkStored
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, out.ID)
	}
	code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk(2))
	if code != http.StatusInsufficientStorage || !strings.Contains(body, CodeQuota) || !strings.Contains(body, "of the 10000 bytes") {
		t.Fatalf("a chunk past the quota: %d %s", code, body)
	}
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id="+sid+"&index=0", "", chunk(0)); code != http.StatusCreated {
		t.Fatalf("a chunk already stored, at the quota: %d %s", code, body)
	}
	premium := &http.Client{Transport: &servicetest.Transport{Caller: "gateway", Principal: &service.Principal{Subject: "bob", Tier: auth.TierPremium}}}
	for i := range 3 {
		if code, body := doAs(t, premium, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk(i)); code != http.StatusCreated {
			t.Fatalf("a premium user's chunk %d: %d %s", i, code, body)
		}
	}
	if code, body := do(t, http.MethodDelete, hs.URL+"/api/v1/chunks/"+ids[1], "", nil); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, body)
	}
	if code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk(2)); code != http.StatusCreated {
		t.Fatalf("after a delete made room: %d %s", code, body)
	}
	// Deleted chunks take room until compaction: storing and deleting in
	// turn stops at twice the quota, and the answer says why.
	for i := 2; i < 6; i++ {
		code, body := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "", chunk(i))
		if code == http.StatusInsufficientStorage {
			if !strings.Contains(body, CodeQuota) || !strings.Contains(body, "you deleted still take room until compaction reclaims them") || i < 4 {
				t.Errorf("round %d refused: %s", i, body)
			}
			break
		}
		if code != http.StatusCreated || i == 5 {
			t.Fatalf("round %d: %d %s", i, code, body)
		}
		var out ChunkStored
		_ = json.Unmarshal([]byte(body), &out)
		for _, id := range []string{out.ID, ids[0]} {
			do(t, http.MethodDelete, hs.URL+"/api/v1/chunks/"+id, "", nil)
		}
	}
	_, metrics := doAs(t, operator, http.MethodGet, hs.URL+"/metrics", "", nil)
	if !strings.Contains(metrics, `lucid_datachain_quota_refusals_total{tier="free"} 2`) {
		t.Errorf("the refusal is not counted:\n%s", metrics)
	}
}

// TestQuotaSettingsAreChecked: a quota is a whole number of bytes, 0 for
// none.
func TestQuotaSettingsAreChecked(t *testing.T) {
	for v, ok := range map[string]bool{"0": true, "1073741824": true, "-1": false, "1GiB": false} {
		r := envconfig.New(envconfig.Map(map[string]string{"LUCID_QUOTA_PREMIUM_BYTES": v}))
		app := New().(*App)
		app.Configure(r)
		if err := r.Err(); (err == nil) != ok {
			t.Errorf("LUCID_QUOTA_PREMIUM_BYTES=%s: %v", v, err)
		} else if err != nil && !strings.Contains(err.Error(), "LUCID_QUOTA_PREMIUM_BYTES") {
			t.Errorf("the error does not name the setting: %v", err)
		}
	}
	app := New().(*App)
	app.Configure(envconfig.New(envconfig.Map(nil)))
	if app.quotas[auth.TierFree] != 1<<30 || app.quotas[auth.TierPremium] != 16<<30 || app.quotas[auth.TierEnterprise] != 0 {
		t.Errorf("default quotas: %v", app.quotas)
	}
}
