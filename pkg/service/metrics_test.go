package service

import (
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMethodLabelOutlivesTheRequestBuffer: a method string that shares a
// buffer the next request overwrites (as fasthttp's adaptor gives) must
// not become a label that changes afterwards. It did: a scrape then found
// two series with the same labels and answered 500.
func TestMethodLabelOutlivesTheRequestBuffer(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newHTTPMetrics(reg)
	buf := []byte("GET")
	shared := unsafe.String(&buf[0], len(buf))
	m.observeRoute("GET /ready", shared, 200, time.Millisecond)
	copy(buf, "PUT") // the connection's next request
	m.observeRoute("GET /ready", "GET", 200, time.Millisecond)
	copy(buf, "GET")
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	if got := methodLabel(shared); unsafe.StringData(got) == unsafe.StringData(shared) {
		t.Error("methodLabel returned its argument, not its own constant")
	}
}
