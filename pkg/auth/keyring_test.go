package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pickme/lucid/pkg/keyring"
)

// TestKeyringRotation: after a rotation the new key signs with its kid,
// the old key's tokens verify until its retirement, a token without kid
// verifies against the current key only, and an unknown kid is refused.
func TestKeyringRotation(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	oldKey, newKey := []byte(strings.Repeat("o", 40)), []byte(strings.Repeat("n", 40))
	retire := now.Add(2 * time.Hour)
	ring, err := NewKeyring(newKey, []keyring.Entry{{Value: oldKey, Until: retire}})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(key []byte) string {
		tok, _, err := Mint(key, MintOptions{Subject: "alice", Tier: TierFree, TTL: 24 * time.Hour, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	noKid := func(key []byte) string {
		c := Claims{Tier: TierFree, RegisteredClaims: jwt.RegisteredClaims{Subject: "bob", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	at := func(t time.Time) func() time.Time { return func() time.Time { return t } }

	tok, _, err := ring.Mint(MintOptions{Subject: "carol", Tier: TierFree, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	parsed, _, _ := jwt.NewParser().ParseUnverified(tok, &Claims{})
	if parsed.Header["kid"] != KeyID(newKey) || ring.CurrentID() != KeyID(newKey) {
		t.Fatalf("kid = %v, want the new key's %s", parsed.Header["kid"], KeyID(newKey))
	}
	if strings.Contains(KeyID(newKey), "6e6e") || len(KeyID(newKey)) != 16 || KeyID(newKey) == KeyID(oldKey) {
		t.Fatalf("key ids %s %s", KeyID(newKey), KeyID(oldKey))
	}
	if _, until, err := ring.Parse(tok, at(now)); err != nil || !until.IsZero() {
		t.Fatalf("current key's token: %v (until %v)", err, until)
	}
	old := mint(oldKey)
	if _, until, err := ring.Parse(old, at(retire.Add(-time.Second))); err != nil || !until.Equal(retire) {
		t.Fatalf("old key before retirement: %v (until %v)", err, until)
	}
	if _, _, err := ring.Parse(old, at(retire)); !errors.Is(err, ErrRetiredKey) {
		t.Fatalf("old key at retirement: %v", err)
	}
	if _, _, err := ring.Parse(noKid(newKey), at(now)); err != nil {
		t.Fatalf("no kid, current key: %v", err)
	}
	if _, _, err := ring.Parse(noKid(oldKey), at(now)); err == nil {
		t.Fatal("no kid, previous key: accepted")
	}
	stranger := mint([]byte(strings.Repeat("x", 40)))
	if _, _, err := ring.Parse(stranger, at(now)); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unknown kid: %v", err)
	}
	// A kid naming the current key does not let another key's signature
	// through.
	forged := jwt.NewWithClaims(jwt.SigningMethodHS256, Claims{Tier: TierFree, RegisteredClaims: jwt.RegisteredClaims{Subject: "eve", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}})
	forged.Header["kid"] = ring.CurrentID()
	f, _ := forged.SignedString(oldKey)
	if _, _, err := ring.Parse(f, at(now)); err == nil {
		t.Fatal("a token with the current kid and the old key's signature was accepted")
	}
	// HS512 with a known kid: the algorithm still has to match exactly.
	hs512 := jwt.NewWithClaims(jwt.SigningMethodHS512, Claims{Tier: TierFree, RegisteredClaims: jwt.RegisteredClaims{Subject: "eve", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}})
	hs512.Header["kid"] = ring.CurrentID()
	h, _ := hs512.SignedString(newKey)
	if _, _, err := ring.Parse(h, at(now)); err == nil {
		t.Fatal("HS512 accepted")
	}
}

func TestKeyringRefusesWeakPreviousKey(t *testing.T) {
	_, err := NewKeyring(secret, []keyring.Entry{{Value: []byte("zq9zq9")}})
	if !errors.Is(err, ErrWeakSecret) || strings.Contains(err.Error(), "zq9") {
		t.Fatalf("weak previous key: %v", err)
	}
}
