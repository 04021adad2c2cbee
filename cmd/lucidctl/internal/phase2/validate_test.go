package phase2

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pickme/lucid/pkg/api"
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
