package service_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// engineOn is an engine's server on host, configured from the environment
// a deploy to that host gives it; its /op says whether the caller is the
// operator (a caller known as no one is refused before it).
func engineOn(t *testing.T, host string) *service.Server {
	t.Helper()
	env := map[string]string{}
	for _, kv := range servicetest.EnvFor("engine", host) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	r := envconfig.New(envconfig.Map(env))
	cfg := service.LoadConfig(r, "engine")
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	s := service.New(cfg, service.NewLogger(io.Discard, slog.LevelError, "engine"))
	s.Handle("GET /op", func(w http.ResponseWriter, r *http.Request) error {
		service.WriteJSON(w, http.StatusOK, map[string]bool{"operator": service.IsOperator(r.Context())})
		return nil
	})
	return s
}

// TestOperatorCredentialOfAnotherHostIsRefused: an engine takes the
// operator's credential for the engine on its own host, and refuses the
// credential for the engine on another host (what a compromised engine
// there recorded from the operator), another service's on its host, and
// the per-service credential of releases rendered before per-host ones.
func TestOperatorCredentialOfAnotherHostIsRefused(t *testing.T) {
	engines := map[string]*service.Server{"pi1": engineOn(t, "pi1"), "pi2": engineOn(t, "pi2")}
	tok := servicetest.OperatorToken
	for _, tc := range []struct {
		name, to, credential string
		status               int
	}{
		{"pi1's own", "pi1", auth.OperatorCredential(tok, "engine", "pi1"), http.StatusOK},
		{"pi2's own", "pi2", auth.OperatorCredential(tok, "engine", "pi2"), http.StatusOK},
		{"pi1's replayed to pi2", "pi2", auth.OperatorCredential(tok, "engine", "pi1"), http.StatusForbidden},
		{"pi2's replayed to pi1", "pi1", auth.OperatorCredential(tok, "engine", "pi2"), http.StatusForbidden},
		{"pi2's data chain's", "pi2", auth.OperatorCredential(tok, "datachain", "pi2"), http.StatusForbidden},
		{"the local stack's", "pi2", auth.OperatorCredential(tok, "engine", auth.LocalHost), http.StatusForbidden},
		{"the per-service one of older releases", "pi2", auth.LegacyOperatorCredential(tok, "engine"), http.StatusForbidden},
		{"the token itself", "pi2", tok, http.StatusForbidden},
	} {
		req := httptest.NewRequest(http.MethodGet, "/op", nil)
		req.Header.Set("Authorization", "Bearer "+tc.credential)
		rec := httptest.NewRecorder()
		engines[tc.to].Handler().ServeHTTP(rec, req)
		if rec.Code != tc.status || (tc.status == http.StatusOK && !strings.Contains(rec.Body.String(), `"operator":true`)) {
			t.Errorf("%s, sent to %s's engine: %d %s, want %d", tc.name, tc.to, rec.Code, rec.Body, tc.status)
		}
	}
}
