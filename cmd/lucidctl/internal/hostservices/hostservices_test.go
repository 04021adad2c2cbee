package hostservices

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

const testToken = "the-operator-token-of-the-tests-0123456789"

// releaseWith is the secrets of a release whose services hold hash(svc).
func releaseWith(t *testing.T, host string, hash func(svc string) string) func(context.Context) (string, deployfiles.DeployedSecrets, error) {
	t.Helper()
	files := map[string][]byte{}
	for _, s := range catalog.Services {
		files[deployfiles.ServiceEnvPath(s.Name)] = []byte("LUCID_OPERATOR_TOKEN_SHA256=" + hash(s.Name) + "\n")
	}
	d, err := deployfiles.ReadDeployedSecrets(host, files)
	if err != nil {
		t.Fatal(err)
	}
	return func(context.Context) (string, deployfiles.DeployedSecrets, error) {
		return "20260101T000000Z-v1", d, nil
	}
}

// TestSessionSendsTheHostsCredential: a session derives each service's
// credential for its own host, and no other.
func TestSessionSendsTheHostsCredential(t *testing.T) {
	s := &Session{Host: "pi2", Creds: &Credentials{Operator: testToken}}
	if got := s.EngineOperator(); got != auth.OperatorCredential(testToken, "engine", "pi2") {
		t.Error("the engine's credential is not pi2's")
	}
	if s.OperatorCredential("engine") == (&Session{Host: "pi1", Creds: s.Creds}).OperatorCredential("engine") {
		t.Error("pi1's and pi2's engines are sent one credential")
	}
	if _, _, err := (&Session{Creds: s.Creds}).Client(context.Background(), "engine", 0); err == nil {
		t.Error("a session without a host name made a client")
	}
}

// TestClassifyRefusedCredentials: a refused credential is an
// authentication failure that says why, from what the host's release
// holds: one rendered before per-host (or per-service) credentials must be
// deployed, for lucidctl sends no older credential; another token's calls
// for the env file. No value is quoted.
func TestClassifyRefusedCredentials(t *testing.T) {
	ctx := context.Background()
	refused := fmt.Errorf("engine: %w", &api.Error{Status: http.StatusForbidden, Code: "LUCID_ERR_2001", Message: "the operator credential is required"})
	for _, tc := range []struct {
		name     string
		deployed func(context.Context) (string, deployfiles.DeployedSecrets, error)
		err      string // in the error
		hint     string // in the hint
	}{
		{"per service", releaseWith(t, "pi1", func(svc string) string { return auth.OperatorTokenHash(auth.LegacyOperatorCredential(testToken, svc)) }),
			"pi1 runs a release rendered before per-host operator credentials", "lucidctl deploy pi1"},
		{"of the token", releaseWith(t, "pi1", func(string) string { return auth.OperatorTokenHash(testToken) }),
			"pi1 runs a release rendered before per-service operator credentials", "lucidctl deploy pi1"},
		{"another token", releaseWith(t, "pi1", func(svc string) string { return auth.OperatorTokenHash(auth.OperatorCredential("another", svc, "pi1")) }),
			"another LUCID_OPERATOR_TOKEN", "--env-file"},
		{"bound to the host", releaseWith(t, "pi1", func(svc string) string { return auth.OperatorTokenHash(auth.OperatorCredential(testToken, svc, "pi1")) }),
			"403", "do they run another release?"},
		{"the release not read", func(context.Context) (string, deployfiles.DeployedSecrets, error) {
			return "", deployfiles.DeployedSecrets{}, errors.New("ssh: no")
		}, "403", "deploy the host"},
		{"the local stack", nil, "403", "lucidctl down, then lucidctl up"},
	} {
		s := &Session{Host: "pi1", Creds: &Credentials{Operator: testToken}, Deployed: tc.deployed}
		err := s.Classify(ctx, refused)
		if cli.ExitCode(ctx, err) != cli.ExitAuth || !strings.Contains(err.Error(), tc.err) || !strings.Contains(cli.Hint(err), tc.hint) {
			t.Errorf("%s: exit %d, %v, hint %q", tc.name, cli.ExitCode(ctx, err), err, cli.Hint(err))
		}
		if !errors.Is(err, refused) && !strings.Contains(err.Error(), refused.Error()) {
			t.Errorf("%s: the service's answer is lost: %v", tc.name, err)
		}
		if strings.Contains(err.Error()+cli.Hint(err), testToken) {
			t.Errorf("%s: the token is quoted", tc.name)
		}
	}
	other := errors.New("dial tcp: refused")
	if err := (&Session{Host: "pi1"}).Classify(ctx, other); !errors.Is(err, other) || cli.ExitCode(ctx, err) == cli.ExitAuth {
		t.Errorf("an error that is no refusal: %v", err)
	}
}
