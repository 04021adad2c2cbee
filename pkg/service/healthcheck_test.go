package service

import (
	"testing"

	"github.com/pickme/lucid/pkg/envconfig"
)

func TestProbeTarget(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		addr    string
		wantTLS bool
	}{
		{"gateway", nil, ":8080", false},
		{"gateway", map[string]string{EnvTLSCertFile: "/c.pem", EnvTLSKeyFile: "/k.pem"}, ":8080", true},
		{"gateway", map[string]string{EnvACMEDomains: "pi.example.net", EnvAddr: ":9443"}, ":9443", true},
		{"engine", map[string]string{EnvACMEDomains: "pi.example.net"}, ":8084", false},
		{"engine", map[string]string{EnvMeshURL: "https://mesh:8088"}, ":8084", true},
	} {
		addr, tls := ProbeTarget(envconfig.New(envconfig.Map(tc.env)), tc.name)
		if addr != tc.addr || tls != tc.wantTLS {
			t.Errorf("%s %v: %s TLS %v, want %s TLS %v", tc.name, tc.env, addr, tls, tc.addr, tc.wantTLS)
		}
	}
}
