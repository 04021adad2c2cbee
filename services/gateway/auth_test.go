package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// TestTokenIssuerAndAudience: with LUCID_JWT_ISSUER and LUCID_JWT_AUDIENCE
// set, a token must carry that issuer and include that audience, or it
// gets the 401 of any bad token; without them, neither is required.
func TestTokenIssuerAndAudience(t *testing.T) {
	be := newBackend(t)
	strict := startGateway(t, be.URL, map[string]string{auth.EnvIssuer: "https://auth.lucid", auth.EnvAudience: "lucid-gateway", "LUCID_RATE_FREE": "10000"})
	lax := startGateway(t, be.URL, nil)
	mint := func(iss string, aud ...string) string {
		tok, _, err := auth.Mint([]byte(secret), auth.MintOptions{Subject: "alice", Tier: auth.TierFree, TTL: time.Hour, Now: strict.now, Issuer: iss, Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name string
		tok  string
		ok   bool
	}{
		{"issuer and audience", mint("https://auth.lucid", "lucid-gateway"), true},
		{"audience among others", mint("https://auth.lucid", "other", "lucid-gateway"), true},
		{"neither", mint(""), false},
		{"no audience", mint("https://auth.lucid"), false},
		{"wrong issuer", mint("https://elsewhere", "lucid-gateway"), false},
		{"wrong audience", mint("https://auth.lucid", "other"), false},
	} {
		hdr := map[string]string{"Authorization": "Bearer " + tc.tok}
		resp, body := strict.get(t, "/api/v1/blocks/1", hdr)
		if tc.ok && resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", tc.name, resp.StatusCode, body)
		}
		if !tc.ok && (resp.StatusCode != 401 || !strings.Contains(body, service.CodeAuth)) {
			t.Errorf("%s: %d %s, want 401 %s", tc.name, resp.StatusCode, body, service.CodeAuth)
		}
		if resp, _ := lax.get(t, "/api/v1/blocks/1", hdr); resp.StatusCode != 200 {
			t.Errorf("%s, nothing required: %d", tc.name, resp.StatusCode)
		}
	}
}
