package deploy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// TestHealthGateOutlastsNoDockerAnswer: a host whose Docker Engine stops
// answering (sshd still up) ends the health gate soon after its timeout,
// saying so, instead of holding it (and the lock) for ever.
func TestHealthGateOutlastsNoDockerAnswer(t *testing.T) {
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer silent.Close()
	dc, err := client.NewClientWithOpts(client.WithHost("tcp://"+silent.Listener.Addr().String()), client.WithVersion("1.44"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dc.Close() }()
	h := &host{name: "pi", docker: dc, project: "lucid", dockerWait: 200 * time.Millisecond}
	err = h.waitHealthy(context.Background(), "r1", 1, 100*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("the gate with a silent Docker Engine: %v", err)
	}
}
