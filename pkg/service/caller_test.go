package service

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
)

// whoServer is a service called name whose /who answers who made the
// request, as the server established it.
func whoServer(t *testing.T, name string) *Server {
	t.Helper()
	s := New(Config{Name: name, ServiceKey: []byte(testKey), OperatorTokenHash: mustHex(auth.OperatorTokenHash("the-operator-token-of-the-tests-0123456789"))},
		NewLogger(io.Discard, slog.LevelError, name))
	s.Handle("GET /who", func(w http.ResponseWriter, r *http.Request) error {
		caller, _ := CallerOf(r.Context())
		p, _ := PrincipalOf(r.Context())
		WriteJSON(w, 200, map[string]any{"caller": caller, "sub": p.Subject, "tier": p.Tier, "operator": IsOperator(r.Context())})
		return nil
	})
	return s
}

func mustHex(h string) []byte {
	b, err := hex.DecodeString(h)
	if err != nil {
		panic(err)
	}
	return b
}

// TestWhoIsCalling: a request is believed to come from a service only with
// a valid signature for this very request, made recently, by a service the
// allow list lets call this one; it acts for a user only when that service
// may act for users here; the operator is known by the token; anyone else
// gets only the shared endpoints.
func TestWhoIsCalling(t *testing.T) {
	anchoring := whoServer(t, "anchoring")
	alice := &Principal{Subject: "alice", Tier: auth.TierFree}
	now := time.Now()
	type attempt struct {
		name    string
		path    string
		caller  string
		when    time.Time
		p       *Principal // signed for
		headers []string   // sent
		status  int
		want    string
	}
	for _, tc := range []attempt{
		{name: "the gateway for alice", caller: "gateway", when: now, p: alice, headers: []string{HeaderSub, "alice", HeaderTier, "free"}, status: 200, want: `"caller":"gateway","operator":false,"sub":"alice","tier":"free"`},
		{name: "the data chain for alice", caller: "datachain", when: now, p: alice, headers: []string{HeaderSub, "alice", HeaderTier, "free"}, status: 200, want: `"sub":"alice"`},
		{name: "the gateway for nobody", caller: "gateway", when: now, status: 200, want: `"caller":"gateway","operator":false,"sub":"","tier":""`},
		{name: "signed for alice, sent as mallory", caller: "gateway", when: now, p: alice, headers: []string{HeaderSub, "mallory", HeaderTier, "free"}, status: 403},
		{name: "signed for alice free, sent as enterprise", caller: "gateway", when: now, p: alice, headers: []string{HeaderSub, "alice", HeaderTier, "enterprise"}, status: 403},
		{name: "signed for another path", path: "/health", caller: "gateway", when: now, status: 403},
		{name: "signed three minutes ago", caller: "gateway", when: now.Add(-3 * time.Minute), status: 403},
		{name: "a service the allow list keeps out", caller: "blocks", when: now, status: 403},
		{name: "a name that is no service", caller: "payments", when: now, status: 403},
		{name: "no signature, claiming alice", headers: []string{HeaderSub, "alice", HeaderTier, "free"}, status: 403},
		{name: "a malformed signature", headers: []string{HeaderCaller, "gateway now junk"}, status: 403},
		{name: "the operator", headers: []string{"Authorization", "Bearer the-operator-token-of-the-tests-0123456789"}, status: 200, want: `"operator":true`},
		{name: "a wrong operator token", headers: []string{"Authorization", "Bearer the-operator-token-of-the-tests-0123456780"}, status: 403},
		{name: "nobody, asking for health", path: "/health", status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/who", nil)
			if tc.caller != "" {
				signed := "/who"
				if tc.path != "" {
					signed = tc.path
				}
				req.Header.Set(HeaderCaller, SignCaller([]byte(testKey), tc.caller, tc.when, http.MethodGet, signed, tc.p))
			} else if tc.path != "" {
				req = httptest.NewRequest(http.MethodGet, tc.path, nil)
			}
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header.Set(tc.headers[i], tc.headers[i+1])
			}
			rec := httptest.NewRecorder()
			anchoring.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("%d %s, want %d with %s", rec.Code, rec.Body, tc.status, tc.want)
			}
		})
	}

	// The block manager believes the gateway's principal, which calls it
	// for users; the engine believes nobody's: anchoring calls it, but
	// never for a user.
	blocks := whoServer(t, "blocks")
	req := httptest.NewRequest(http.MethodGet, "/who", nil)
	req.Header.Set(HeaderCaller, SignCaller([]byte(testKey), "gateway", now, http.MethodGet, "/who", alice))
	req.Header.Set(HeaderSub, "alice")
	req.Header.Set(HeaderTier, "free")
	rec := httptest.NewRecorder()
	blocks.Handler().ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), `"sub":"alice"`) {
		t.Errorf("the block manager, called by the gateway for alice: %s", rec.Body)
	}
	engine := whoServer(t, "engine")
	req = httptest.NewRequest(http.MethodGet, "/who", nil)
	req.Header.Set(HeaderCaller, SignCaller([]byte(testKey), "anchoring", now, http.MethodGet, "/who", alice))
	req.Header.Set(HeaderSub, "alice")
	req.Header.Set(HeaderTier, "free")
	rec = httptest.NewRecorder()
	engine.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"caller":"anchoring"`) || !strings.Contains(rec.Body.String(), `"sub":""`) {
		t.Errorf("the engine, called by anchoring claiming alice: %d %s (anchoring does not act for users)", rec.Code, rec.Body)
	}
}

// TestPrincipalTravelsOnlyWhereItMay: a service's client passes on the
// principal of the request it serves to a service it acts for users
// towards, and to no other.
func TestPrincipalTravelsOnlyWhereItMay(t *testing.T) {
	anchoring := whoServer(t, "anchoring")
	ts := httptest.NewServer(anchoring.Handler())
	defer ts.Close()
	datachain := New(Config{Name: "datachain", ServiceKey: []byte(testKey)}, NewLogger(io.Discard, slog.LevelError, "datachain"))
	ctx := WithPrincipal(t.Context(), Principal{Subject: "alice", Tier: auth.TierPremium})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/who", nil)
	resp, err := datachain.Client("anchoring", time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"caller":"datachain"`) || !strings.Contains(string(b), `"sub":"alice","tier":"premium"`) {
		t.Errorf("the data chain's call for alice: %s", b)
	}
	// The block manager may call the engine, but never for a user.
	engine := whoServer(t, "engine")
	te := httptest.NewServer(engine.Handler())
	defer te.Close()
	blocks := New(Config{Name: "blocks", ServiceKey: []byte(testKey)}, NewLogger(io.Discard, slog.LevelError, "blocks"))
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, te.URL+"/who", nil)
	resp, err = blocks.Client("engine", time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"caller":"blocks"`) || !strings.Contains(string(b), `"sub":""`) {
		t.Errorf("the block manager's call with alice in its context: %d %s", resp.StatusCode, b)
	}
}

// TestSlotsBoundUsers: a user holds at most PerUser slots, all users Total;
// a service acting for nobody is not counted; release gives a slot back,
// once.
func TestSlotsBoundUsers(t *testing.T) {
	s := NewSlots("streams", 3, 2)
	as := func(sub string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		return r.WithContext(WithPrincipal(r.Context(), Principal{Subject: sub, Tier: auth.TierFree}))
	}
	a1, err1 := s.Acquire(as("alice").Context())
	_, err2 := s.Acquire(as("alice").Context())
	_, err3 := s.Acquire(as("alice").Context())
	if err1 != nil || err2 != nil {
		t.Fatalf("alice's first two: %v %v", err1, err2)
	}
	var he *HTTPError
	if !errors.As(err3, &he) || he.Status != http.StatusTooManyRequests || he.RetryAfter == 0 {
		t.Errorf("alice's third: %v, want 429 with Retry-After", err3)
	}
	if _, err := s.Acquire(as("bob").Context()); err != nil {
		t.Errorf("bob's first: %v", err)
	}
	if _, err := s.Acquire(as("carol").Context()); !errors.As(err, &he) || he.Status != http.StatusServiceUnavailable {
		t.Errorf("carol, with all three slots taken: %v, want 503", err)
	}
	if _, err := s.Acquire(t.Context()); err != nil {
		t.Errorf("a service for itself: %v", err)
	}
	// Anonymous users, through a public route of the gateway, are one
	// user: counted, and refused at the per-user limit.
	anon := context.WithValue(t.Context(), requestInfoKey{}, &requestInfo{who: &identity{caller: catalog.GatewayService}})
	if _, err := s.Acquire(anon); !errors.As(err, &he) || he.Status != http.StatusServiceUnavailable {
		t.Errorf("an anonymous user, with all three slots taken: %v, want 503", err)
	}
	a1()
	a1() // twice is once
	if _, err := s.Acquire(as("carol").Context()); err != nil {
		t.Errorf("carol after alice let one go: %v", err)
	}
	if _, err := s.Acquire(as("dave").Context()); err == nil {
		t.Error("a second release freed another slot")
	}
}

// TestSigningAndRequestContextsAllocateNothing: the gateway signs every
// request it forwards and carries every request's ID in a context; neither
// may cost an allocation on its hot path, and both must say what the
// allocating forms say.
func TestSigningAndRequestContextsAllocateNothing(t *testing.T) {
	s := NewCallerSigner([]byte(testKey), "gateway")
	now := time.Unix(1_790_000_000, 0)
	p := &Principal{Subject: "alice", Tier: auth.TierPremium}
	want := SignCaller([]byte(testKey), "gateway", now, "GET", "/api/v1/anchors/x", p)
	var buf [160]byte
	if got := string(s.AppendSign(buf[:0], now, "GET", "/api/v1/anchors/x", p)); got != want {
		t.Fatalf("AppendSign = %q, Sign = %q", got, want)
	}
	r := httptest.NewRequest(http.MethodGet, "/api/v1/anchors/x", nil)
	if caller, err := verifyCaller([]byte(testKey), want, now, r, p); err != nil || caller != "gateway" {
		t.Fatalf("the signature does not verify: %q, %v", caller, err)
	}
	if n := testing.AllocsPerRun(100, func() { s.AppendSign(buf[:0], now, "GET", "/api/v1/anchors/x", p) }); n != 0 && !raceEnabled {
		t.Errorf("AppendSign allocates %.0f times a call", n)
	}

	type otherKey struct{}
	parent := context.WithValue(context.Background(), otherKey{}, "kept")
	var rc RequestContext
	rc.Reset(parent, "req-1")
	if got := RequestID(&rc); got != "req-1" {
		t.Errorf("RequestID = %q, want req-1", got)
	}
	if got := (&rc).Value(otherKey{}); got != "kept" {
		t.Errorf("the parent's value = %v, want kept", got)
	}
	rc.Reset(parent, "req-2")
	if got := RequestID(&rc); got != "req-2" {
		t.Errorf("after Reset, RequestID = %q, want req-2", got)
	}
	if n := testing.AllocsPerRun(100, func() { rc.Reset(parent, "req-3"); _ = RequestID(&rc) }); n != 0 && !raceEnabled {
		t.Errorf("a request context allocates %.0f times a request", n)
	}
}
