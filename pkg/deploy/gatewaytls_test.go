package deploy

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// The gateway's certificate gauge, as the Prometheus client writes it: the
// soonest expiry first, days left rounded down, a warning under 14 days;
// no gauge (plain HTTP) is no TLS; a broken value is an error.
func TestParseGatewayTLS(t *testing.T) {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	metrics := `# HELP lucid_gateway_tls_certificate_expiry_timestamp_seconds NotAfter of each certificate served.
# TYPE lucid_gateway_tls_certificate_expiry_timestamp_seconds gauge
lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="pi.example.net"} 1.8e+09
lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="api.example.net",x="a\"b"} ` + formatUnix(now.Add(9*24*time.Hour+time.Hour)) + `
lucid_gateway_tls_certificate_renewals_total 3
lucid_gateway_requests_total{route="/"} 7
`
	g, err := ParseGatewayTLS([]byte(metrics), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Certificates) != 2 || g.Certificates[0].Name != "api.example.net" || g.DaysLeft != 9 || !g.ExpiresSoon || !g.NotAfter.Equal(now.Add(9*24*time.Hour+time.Hour)) {
		t.Errorf("%+v", g)
	}
	if c := g.Certificates[1]; c.Name != "pi.example.net" || c.NotAfter.Unix() != 1800000000 || c.DaysLeft != 40 {
		t.Errorf("second: %+v", c)
	}
	if g, err := ParseGatewayTLS([]byte("lucid_gateway_requests_total 1\n"), now); g != nil || err != nil {
		t.Errorf("plain HTTP: %+v %v", g, err)
	}
	expired := `lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="old"} ` + formatUnix(now.Add(-36*time.Hour)) + "\n"
	if g, err := ParseGatewayTLS([]byte(expired), now); err != nil || g.DaysLeft != -2 || !g.ExpiresSoon {
		t.Errorf("expired: %+v %v", g, err)
	}
	if _, err := ParseGatewayTLS([]byte(`lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="x"} soon`+"\n"), now); err == nil || !strings.Contains(err.Error(), "not a time") {
		t.Errorf("a broken value: %v", err)
	}
}

func formatUnix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }
