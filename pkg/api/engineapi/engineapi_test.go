package engineapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/chain"
)

// TestFollowGivesUpOnASilentStream: a peer that answers and then says
// nothing (half-open connection) is dropped after the idle timeout.
func TestFollowGivesUpOnASilentStream(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	old := FollowIdleTimeout
	FollowIdleTimeout = 200 * time.Millisecond
	defer func() { FollowIdleTimeout = old }()

	start := time.Now()
	err := New(srv.URL, nil).Follow(context.Background(), 1, func(*chain.Block) error { return nil })
	if !errors.Is(err, errIdle) {
		t.Fatalf("Follow = %v, want the idle error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("gave up after %s", d)
	}
}

func TestErrorsCarryStatusAndCode(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"LUCID_ERR_1004","message":"no transaction x"}}`))
	}))
	defer srv.Close()
	_, err := New(srv.URL, nil).Tx(context.Background(), "x")
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 || e.Code != "LUCID_ERR_1004" || !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %#v", err)
	}
}
