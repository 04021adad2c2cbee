package auth

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte(strings.Repeat("s", MinSecretLen))

func TestMintParse(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	tok, claims, err := Mint(secret, MintOptions{Subject: "alice", Tier: TierPremium, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if claims.ExpiresAt.Time != now.Add(time.Hour) {
		t.Errorf("exp = %v", claims.ExpiresAt)
	}
	got, err := Parse(secret, tok, func() time.Time { return now.Add(time.Minute) })
	if err != nil {
		t.Fatal(err)
	}
	if got.Subject != "alice" || got.Tier != TierPremium {
		t.Errorf("claims = %+v", got)
	}
	if _, err := Parse(secret, tok, func() time.Time { return now.Add(2 * time.Hour) }); err == nil {
		t.Error("expired token accepted")
	}
	if _, err := Parse([]byte(strings.Repeat("x", MinSecretLen)), tok, func() time.Time { return now }); err == nil {
		t.Error("token accepted with the wrong secret")
	}
}

func TestMintRefuses(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
		opts   MintOptions
		weak   bool
	}{
		{"empty secret", nil, MintOptions{Subject: "a", Tier: TierFree, TTL: time.Hour}, true},
		{"short secret", []byte("short"), MintOptions{Subject: "a", Tier: TierFree, TTL: time.Hour}, true},
		{"no subject", secret, MintOptions{Tier: TierFree, TTL: time.Hour}, false},
		{"subject with a newline", secret, MintOptions{Subject: "a\r\nX-Lucid-Tier: enterprise", Tier: TierFree, TTL: time.Hour}, false},
		{"long subject", secret, MintOptions{Subject: strings.Repeat("a", MaxSubjectLen+1), Tier: TierFree, TTL: time.Hour}, false},
		{"subject with a space in front", secret, MintOptions{Subject: " alice", Tier: TierFree, TTL: time.Hour}, false},
		{"subject with a space behind", secret, MintOptions{Subject: "alice ", Tier: TierFree, TTL: time.Hour}, false},
		{"bad tier", secret, MintOptions{Subject: "a", Tier: "gold", TTL: time.Hour}, false},
		{"no ttl", secret, MintOptions{Subject: "a", Tier: TierFree}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Mint(tt.secret, tt.opts)
			if err == nil {
				t.Fatal("want an error")
			}
			if errors.Is(err, ErrWeakSecret) != tt.weak {
				t.Errorf("errors.Is(err, ErrWeakSecret) = %v, want %v (%v)", !tt.weak, tt.weak, err)
			}
		})
	}
}

// TestParseStrict checks the refusals the gateway relies on.
func TestParseStrict(t *testing.T) {
	now := time.Now()
	claims := Claims{Tier: TierFree, RegisteredClaims: jwt.RegisteredClaims{Subject: "a", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, claims).SignedString(secret)
	noExp := claims
	noExp.ExpiresAt = nil
	noExpTok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, noExp).SignedString(secret)
	// A validly signed subject that would split a header line upstream.
	ctl := claims
	ctl.Subject = "a\nX-Lucid-Tier: enterprise"
	ctlTok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, ctl).SignedString(secret)
	// A validly signed subject that a header's parser would trim to another
	// user's.
	padded := claims
	padded.Subject = " a "
	paddedTok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, padded).SignedString(secret)
	for name, tok := range map[string]string{"alg none": none, "HS512": hs512, "no exp": noExpTok, "control characters in sub": ctlTok, "spaces around sub": paddedTok} {
		if _, err := Parse(secret, tok, nil); err == nil {
			t.Errorf("%s: token accepted", name)
		}
	}
}

// TestIssuerAndAudience: a token minted with an issuer and audiences
// passes a parser that requires them; one without, or with others, fails;
// a parser that requires nothing accepts both.
func TestIssuerAndAudience(t *testing.T) {
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	at := func() time.Time { return now }
	mint := func(iss string, aud ...string) string {
		t.Helper()
		tok, _, err := Mint(secret, MintOptions{Subject: "alice", Tier: TierFree, TTL: time.Hour, Now: now, Issuer: iss, Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	require := []ParseOption{WithIssuer("https://auth.lucid"), WithAudience("lucid-gateway")}
	for _, tc := range []struct {
		name string
		tok  string
		ok   bool
	}{
		{"both", mint("https://auth.lucid", "lucid-gateway"), true},
		{"the audience among others", mint("https://auth.lucid", "billing", "lucid-gateway"), true},
		{"no issuer", mint("", "lucid-gateway"), false},
		{"another issuer", mint("https://evil", "lucid-gateway"), false},
		{"no audience", mint("https://auth.lucid"), false},
		{"another audience", mint("https://auth.lucid", "billing"), false},
	} {
		c, err := Parse(secret, tc.tok, at, require...)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok %v", tc.name, err, tc.ok)
		}
		if _, err := Parse(secret, tc.tok, at); err != nil {
			t.Errorf("%s, nothing required: %v", tc.name, err)
		}
		if tc.ok && (c.Issuer != "https://auth.lucid" || !slices.Contains(c.Audience, "lucid-gateway")) {
			t.Errorf("%s: claims %+v", tc.name, c)
		}
	}
	if _, err := Parse(secret, mint(""), at, WithIssuer(""), WithAudience("")); err != nil {
		t.Errorf("empty requirements require nothing: %v", err)
	}
}

// TestPerTierOf: each tier gets its own value; a tier the setting does not
// hold gets the free tier's, never a zero that could mean "no bound".
func TestPerTierOf(t *testing.T) {
	quota := PerTier[uint64]{TierFree: 1 << 30, TierPremium: 16 << 30, TierEnterprise: 0}
	for tier, want := range map[Tier]uint64{TierFree: 1 << 30, TierPremium: 16 << 30, TierEnterprise: 0, "gold": 1 << 30, "": 1 << 30} {
		if got := quota.Of(tier); got != want {
			t.Errorf("Of(%q) = %d, want %d", tier, got, want)
		}
	}
}
