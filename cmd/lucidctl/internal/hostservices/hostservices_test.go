package hostservices

import (
	"context"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
)

const testToken = "the-operator-token-of-the-tests-0123456789"

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
