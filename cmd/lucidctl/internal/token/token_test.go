package token

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
)

const goodSecret = "0123456789abcdefghijklmnopqrstuvwxyzABCD"

func TestTokenFromEnvironment(t *testing.T) {
	io, _, out, _ := iostreams.Test()
	env := cli.NewEnv(io, func(k string) string { return map[string]string{"JWT_SECRET_KEY": goodSecret}[k] })
	opts := &Options{Env: env, Subject: "alice", Tier: "enterprise", TTL: time.Hour, Now: time.Now}
	if err := run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(out.String())
	claims, err := auth.Parse([]byte(goodSecret), tok, nil)
	if err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
	if claims.Subject != "alice" || claims.Tier != auth.TierEnterprise {
		t.Errorf("claims = %+v", claims)
	}
}

// TestTokenRefusesABadSubject: a subject no token may carry is the
// flag's fault, a usage error before any secret is read, not the secret's.
func TestTokenRefusesABadSubject(t *testing.T) {
	for _, sub := range []string{"", " alice", "bob\n"} {
		io, _, _, _ := iostreams.Test()
		env := cli.NewEnv(io, func(k string) string { return map[string]string{"JWT_SECRET_KEY": goodSecret}[k] })
		err := run(context.Background(), &Options{Env: env, Subject: sub, Tier: "free", TTL: time.Hour, Now: time.Now})
		if cli.ExitCode(context.Background(), err) != cli.ExitUsage || !strings.Contains(err.Error(), "--sub") || strings.Contains(err.Error(), "JWT_SECRET_KEY") {
			t.Errorf("--sub %q: %v, want a usage error about --sub", sub, err)
		}
	}
}

func TestTokenFromEnvFileAsJSON(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env.core")
	if err := os.WriteFile(envFile, []byte("JWT_SECRET_KEY="+goodSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	io, _, out, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.JSON = true
	opts := &Options{Env: env, Subject: "bob", Tier: "free", TTL: time.Minute, EnvFile: envFile, Now: time.Now}
	if err := run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	var o Output
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatalf("stdout is not JSON: %v", err)
	}
	if _, err := auth.Parse([]byte(goodSecret), o.Token, nil); err != nil || o.Tier != "free" || o.Subject != "bob" {
		t.Errorf("output %+v, verify: %v", o, err)
	}
	if strings.Contains(out.String(), goodSecret) {
		t.Error("the secret reached the output")
	}
}

func TestTokenRefusesWeakOrMissingSecret(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short.env")
	empty := filepath.Join(dir, "empty.env")
	_ = os.WriteFile(short, []byte("JWT_SECRET_KEY=hunter2\n"), 0o600)
	_ = os.WriteFile(empty, []byte("JWT_SECRET_KEY=\n"), 0o600)
	tests := []struct {
		name    string
		envFile string
		want    string
	}{
		{"short", short, "7 bytes, at least 32 are required"},
		{"empty", empty, "it is empty"},
		{"missing file", filepath.Join(dir, "none.env"), "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			io, _, out, _ := iostreams.Test()
			env := cli.NewEnv(io, func(string) string { return "" })
			opts := &Options{Env: env, Subject: "a", Tier: "free", TTL: time.Hour, EnvFile: tt.envFile, Now: time.Now}
			err := run(context.Background(), opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to say %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the secret reached the error: %v", err)
			}
			if cli.Hint(err) == "" {
				t.Errorf("no hint for %v", err)
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q", out.String())
			}
		})
	}
}

// TestTokenIssuerAndAudience: by default the token carries
// LUCID_JWT_ISSUER and LUCID_JWT_AUDIENCE from the environment, else, when
// JWT_SECRET_KEY came from the env file, from that file, so it passes the
// gateway the secret is for; --issuer and --audience beat both, and empty
// means none.
func TestTokenIssuerAndAudience(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, ".env.core")
	content := "JWT_SECRET_KEY=" + goodSecret + "\nLUCID_JWT_ISSUER=https://auth.lucid\nLUCID_JWT_AUDIENCE=lucid-gateway\n"
	if err := os.WriteFile(envFile, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		environ  map[string]string
		envFile  string
		args     []string
		iss, aud string
	}{
		{"from the env file", nil, envFile, nil, "https://auth.lucid", "lucid-gateway"},
		{"the environment beats the file", map[string]string{"LUCID_JWT_ISSUER": "https://env"}, envFile, nil, "https://env", "lucid-gateway"},
		{"all from the environment, no file", map[string]string{"JWT_SECRET_KEY": goodSecret, "LUCID_JWT_AUDIENCE": "aud-env"}, filepath.Join(dir, "none.env"), nil, "", "aud-env"},
		{"a secret from the environment takes nothing from the file", map[string]string{"JWT_SECRET_KEY": goodSecret}, envFile, nil, "", ""},
		{"flags beat both", map[string]string{"LUCID_JWT_ISSUER": "https://env"}, envFile, []string{"--issuer", "https://flag", "--audience", "aud-flag"}, "https://flag", "aud-flag"},
		{"empty flags mean none", nil, envFile, []string{"--issuer=", "--audience="}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			io, _, out, _ := iostreams.Test()
			env := cli.NewEnv(io, func(k string) string { return tc.environ[k] })
			cmd := NewCmd(env)
			cmd.SetArgs(append([]string{"--sub", "alice", "--env-file", tc.envFile}, tc.args...))
			if err := cmd.ExecuteContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			tok := strings.TrimSpace(out.String())
			var opts []auth.ParseOption
			if tc.iss != "" {
				opts = append(opts, auth.WithIssuer(tc.iss))
			}
			if tc.aud != "" {
				opts = append(opts, auth.WithAudience(tc.aud))
			}
			c, err := auth.Parse([]byte(goodSecret), tok, nil, opts...)
			if err != nil {
				t.Fatalf("the token does not pass a gateway requiring iss %q aud %q: %v", tc.iss, tc.aud, err)
			}
			if c.Issuer != tc.iss || (tc.aud == "") != (len(c.Audience) == 0) {
				t.Errorf("claims iss %q aud %q, want %q %q", c.Issuer, c.Audience, tc.iss, tc.aud)
			}
		})
	}
}
