package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/keyring"
)

// rotatedKey is the JWT_SECRET_KEY after a rotation; secret (the harness's)
// is the previous one.
var rotatedKey = strings.Repeat("r", 40)

// rotatedEnv is a gateway's environment after rotating from secret to
// rotatedKey, the old key retiring at retire.
func rotatedEnv(retire time.Time) map[string]string {
	return map[string]string{
		"JWT_SECRET_KEY":    rotatedKey,
		keyring.JWTPrevious: keyring.Format([]keyring.Entry{{Value: []byte(secret), Until: retire}}),
		"LUCID_RATE_FREE":   "1000000",
	}
}

func mintWith(t testing.TB, key string, now time.Time) string {
	t.Helper()
	tok, _, err := auth.Mint([]byte(key), auth.MintOptions{Subject: "alice", Tier: auth.TierFree, TTL: 24 * time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestTokenKeyRotation: a token of the previous key verifies until the
// key's retirement, then gets 401 (also when it was verified, and cached,
// before); an unknown kid gets 401; a token without kid verifies against
// the current key only.
func TestTokenKeyRotation(t *testing.T) {
	be := newBackend(t)
	start := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	retire := start.Add(time.Hour)
	g := startGateway(t, be.URL, rotatedEnv(retire))
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }
	status := func(tok string) int {
		resp, _ := g.get(t, "/api/v1/blocks/1", bearer(tok))
		return resp.StatusCode
	}
	noKid := func(key string) string {
		c := auth.Claims{Tier: auth.TierFree, RegisteredClaims: jwt.RegisteredClaims{Subject: "bob", ExpiresAt: jwt.NewNumericDate(start.Add(24 * time.Hour))}}
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(key))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	old, cur := mintWith(t, secret, start), mintWith(t, rotatedKey, start)
	for _, tc := range []struct {
		name string
		tok  string
		want int
	}{
		{"old key before retirement", old, 200},
		{"current key", cur, 200},
		{"no kid, current key", noKid(rotatedKey), 200},
		{"no kid, old key", noKid(secret), 401},
		{"unknown kid", mintWith(t, strings.Repeat("u", 40), start), 401},
	} {
		if got := status(tc.tok); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	g.advance(time.Hour - time.Second)
	if got := status(old); got != 200 {
		t.Fatalf("old key a second before retirement: %d", got)
	}
	g.advance(time.Second)
	if got := status(old); got != 401 {
		t.Errorf("old key at retirement (cached before): %d, want 401", got)
	}
	if got := status(cur); got != 200 {
		t.Errorf("current key after the old one retired: %d", got)
	}
}

// TestKeyRotationMidTrafficDropsNoRequest: clients keep sending while the
// gateway is replaced by one configured after a rotation (the old key
// previous), and the issuer switches to the new key once it is: every
// request is answered 200, whichever key signed its token and whichever
// gateway took it.
func TestKeyRotationMidTrafficDropsNoRequest(t *testing.T) {
	be := newBackend(t)
	before := startGateway(t, be.URL, map[string]string{"LUCID_RATE_FREE": "1000000"})
	after := startGateway(t, be.URL, rotatedEnv(before.now.Add(24*time.Hour)))
	var front atomic.Pointer[gw]
	front.Store(before)
	var signing atomic.Pointer[string]
	signing.Store(&secret)
	oldTok := mintWith(t, secret, before.now)

	const workers, perWorker = 8, 60
	var sent, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	switched := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok := oldTok // a client keeps the token it has
			for i := range perWorker {
				if w == 0 && i == perWorker/2 {
					// The rolling restart: the new gateway takes the
					// traffic, then the issuer signs with the new key.
					front.Store(after)
					signing.Store(&rotatedKey)
					close(switched)
				}
				if i%10 == 9 { // now and then a client logs in again
					tok = mintWith(t, *signing.Load(), before.now)
				}
				req, _ := http.NewRequest(http.MethodGet, front.Load().url+"/api/v1/blocks/1", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := http.DefaultClient.Do(req)
				sent.Add(1)
				if err == nil {
					_ = resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("worker %d request %d: %v %v", w, i, err, resp))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	<-switched
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across the rotation: %s", failed.Load(), sent.Load(), strings.Join(failures[:min(len(failures), 5)], "; "))
	}
}

// TestPreviousKeysChecked: a malformed or weak JWT_PREVIOUS_KEYS is a
// configuration error that shows no value.
func TestPreviousKeysChecked(t *testing.T) {
	for _, v := range []string{"not base64!", keyring.Format([]keyring.Entry{{Value: []byte("weak-old-key")}})} {
		r := envconfig.New(envconfig.Map(map[string]string{"JWT_SECRET_KEY": rotatedKey, keyring.JWTPrevious: v}))
		New().Configure(r)
		err := r.Err()
		if err == nil {
			t.Fatalf("%q accepted", v)
		}
		if strings.Contains(err.Error(), "weak-old-key") || strings.Contains(err.Error(), "base64!") {
			t.Fatalf("the error shows the value: %v", err)
		}
	}
}
