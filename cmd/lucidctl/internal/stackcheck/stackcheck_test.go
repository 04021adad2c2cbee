package stackcheck

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/runningstack"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/service"
)

// The gateway's public /ready names failing checks without their details;
// validate's health check reports those names, from a real server's
// answer.
func TestFailingChecksOfAPublicReady(t *testing.T) {
	srv := service.New(service.Config{Name: "gateway", Public: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.AddDetailedCheck("upstreams", func(context.Context) (string, error) {
		return "static: engine=http://127.0.0.1:8084", errors.New("no healthy instance of engine")
	})
	srv.AddCheck("mesh", func(context.Context) error { return nil })
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	err := api.Do(context.Background(), ts.Client(), api.Request{Method: http.MethodGet, URL: ts.URL + "/ready"}, nil)
	if got := failingChecks(err); got != "not_ready: upstreams fail" {
		t.Errorf("failingChecks = %q (from %v)", got, err)
	}
	if got := failingChecks(errors.New("connection refused")); got != "" {
		t.Errorf("failingChecks of another error = %q", got)
	}
}

// outcome is a check's line from its answer.
func outcome(detail string, err error) CheckResult { return result("check", detail, err) }

// mesh serves a mesh controller's /ready, with a Consul check when
// withConsul, as `lucid mesh` has exactly when it was given a Consul.
func mesh(t *testing.T, withConsul bool) string {
	t.Helper()
	srv := service.New(service.Config{Name: catalog.MeshService}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if withConsul {
		srv.AddDetailedCheck(meshapi.ConsulReadyCheck, func(context.Context) (string, error) {
			return "", errors.New("consul is unreachable")
		})
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return ts.URL
}

// Without Consul the check is skipped, with the reason; with Consul
// expected but unreachable it fails.
func TestConsulCheckFollowsTheMeshController(t *testing.T) {
	unreachable := "http://127.0.0.1:1"
	tests := []struct {
		name       string
		withConsul bool
		want       Status
		detail     string
	}{
		{"static discovery", false, StatusSkipped, "the stack runs without Consul"},
		{"consul expected, unreachable", true, StatusFailed, "the mesh controller uses Consul, which does not answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &runningstack.Endpoints{Service: map[string]string{catalog.MeshService: mesh(t, tt.withConsul)}, Consul: unreachable}
			defer e.Close()
			v := &validator{e: e, client: e.Client(time.Second)}
			r := outcome(v.consul(context.Background()))
			if r.Status != tt.want || !strings.Contains(r.Detail, tt.detail) || r.Pass != (tt.want == StatusOK) {
				t.Errorf("consul check: %+v", r)
			}
		})
	}
	// No mesh controller to ask: a failure, not a guess.
	e := &runningstack.Endpoints{Service: map[string]string{catalog.MeshService: unreachable}, Consul: unreachable}
	defer e.Close()
	if r := outcome((&validator{e: e, client: e.Client(time.Second)}).consul(context.Background())); r.Status != StatusFailed {
		t.Errorf("consul check without a mesh controller: %+v", r)
	}
}

// A skipped check is spelled out in text and JSON and fails nothing.
func TestSkippedIsItsOwnStatus(t *testing.T) {
	var b strings.Builder
	for _, r := range []CheckResult{result("a", "fine", nil), result("b", "", skip("not here")), result("c", "", errors.New("broken"))} {
		printLine(&b, r)
	}
	want := "ok    a                            fine\nskip  b                            not here\nFAIL  c                            broken\n"
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
	data, err := json.Marshal(result("b", "", skip("not here")))
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"name":"b","status":"skipped","pass":false,"detail":"not here"}` {
		t.Errorf("json: %s", data)
	}
}

// Lucid's own tree passes the isolation check under the default policy,
// as on a checkout, and the detail says what that proves.
func TestIsolationOfThisTree(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
	v := &validator{env: env, source: "../../../.."}
	d, err := v.isolation(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d, "names no payment term and imports no payment module") || !strings.Contains(d, "holds no payment tree") {
		t.Errorf("detail: %s", d)
	}
	v.source = t.TempDir()
	if r := outcome(v.isolation(context.Background())); r.Status != StatusSkipped || !strings.Contains(r.Detail, "no chain code") {
		t.Errorf("a tree without chain code: %+v", r)
	}
}
