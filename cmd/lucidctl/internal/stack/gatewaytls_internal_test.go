package stack

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/observe"
)

// The local gateway's certificates come from its /metrics, over HTTPS
// when it speaks TLS though its URL says http; a plain gateway has none.
func TestLocalGatewayTLS(t *testing.T) {
	notAfter := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second)
	metrics := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="pi.example.net"} ` + strconv.FormatInt(notAfter.Unix(), 10) + "\n"))
	}
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(metrics))
	defer tlsSrv.Close()
	g, err := gatewayTLS(context.Background(), strings.Replace(tlsSrv.URL, "https://", "http://", 1))
	if err != nil || g == nil || g.Certificates[0].Name != "pi.example.net" || !g.NotAfter.Equal(notAfter) || !g.ExpiresSoon || g.DaysLeft != 9 {
		t.Fatalf("TLS gateway: %+v %v", g, err)
	}
	io, _, out, _ := iostreams.Test()
	observe.PrintGatewayTLS(out, io.OutStyles(), g)
	if !strings.Contains(out.String(), "warning: pi.example.net expires "+notAfter.UTC().Format(time.RFC3339)+" (9 days left); renew it") {
		t.Errorf("text: %q", out.String())
	}

	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("lucid_gateway_requests_total 1\n"))
	}))
	defer plain.Close()
	if g, err := gatewayTLS(context.Background(), plain.URL); g != nil || err != nil {
		t.Errorf("plain gateway: %+v %v", g, err)
	}
	out.Reset()
	observe.PrintGatewayTLS(out, io.OutStyles(), nil)
	if out.String() != "gateway tls: none (plain HTTP)\n" {
		t.Errorf("text without TLS: %q", out.String())
	}
}
