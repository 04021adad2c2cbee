package runningstack

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
)

// A secret too weak to sign with is refused once, naming where it came
// from and never its value, before any scenario runs.
func TestWeakSecretIsRefusedUpFront(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(k string) string {
		if k == "JWT_SECRET_KEY" {
			return "short-secret"
		}
		return ""
	})
	env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
	_, err := Flags{}.Resolve(context.Background(), env)
	if !errors.Is(err, auth.ErrWeakSecret) || !strings.Contains(err.Error(), "the environment") || strings.Contains(err.Error(), "short-secret") {
		t.Fatalf("resolve with a short secret: %v", err)
	}
}

// The tokens validate and bench mint carry LUCID_JWT_ISSUER and
// LUCID_JWT_AUDIENCE (the environment beating the env file), so they pass
// a gateway that requires them.
func TestTokensCarryIssuerAndAudience(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env.core")
	secret := strings.Repeat("s", 40)
	if err := os.WriteFile(envFile, []byte("JWT_SECRET_KEY="+secret+"\nLUCID_JWT_ISSUER=https://file\nLUCID_JWT_AUDIENCE=lucid-gateway\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(k string) string { return map[string]string{"LUCID_JWT_ISSUER": "https://env"}[k] })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	e, err := Flags{envFile: envFile, target: "http://127.0.0.1:1"}.Resolve(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	tok, err := e.Token("alice", auth.TierFree)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Parse([]byte(secret), tok, nil, auth.WithIssuer("https://env"), auth.WithAudience("lucid-gateway")); err != nil {
		t.Errorf("the token does not pass a gateway requiring them: %v", err)
	}
}
