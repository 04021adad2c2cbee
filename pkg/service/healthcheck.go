package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	neturl "net/url"
	"strconv"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
)

// EnvACMEDomains is LUCID_ACME_DOMAINS: when set, a public listener serves
// TLS with certificates obtained over ACME (pkg/edgetls reads it).
const EnvACMEDomains = "LUCID_ACME_DOMAINS"

// ProbeTarget reads from r only what a health probe of the service called
// name needs: its listen address and whether it serves TLS. A probe holds
// no credential, so a missing secret is not its concern.
func ProbeTarget(r *envconfig.Reader, name string) (addr string, tls bool) {
	svc, ok := catalog.Lookup(name)
	if !ok {
		panic(fmt.Sprintf("service %q is not in the catalog", name))
	}
	addr = r.ListenAddr(EnvAddr, ":"+strconv.Itoa(svc.Port))
	if svc.Public {
		// An operator's certificate or an ACME one: either way the probe
		// speaks TLS, and does not verify a certificate made for a public
		// name while it dials 127.0.0.1 (see insecureHealthClient).
		return addr, r.String(EnvTLSCertFile, "") != "" || r.String(EnvACMEDomains, "") != ""
	}
	return addr, r.String(EnvMeshURL, "") != ""
}

// Probe asks the service listening on addr (a listen address such as ":8084")
// whether path ("/health" or "/ready") answers 200, over TLS when mtls is
// set. It is what `lucid <service> healthcheck` runs inside images that have
// no curl.
func Probe(ctx context.Context, addr, path string, mtls bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme, client := "http", http.DefaultClient
	if mtls {
		scheme, client = "https", insecureHealthClient
	}
	url := scheme + "://" + net.JoinHostPort(host, port) + path

	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err = api.Do(ctx, client, api.Request{Method: http.MethodGet, URL: url}, nil)
	if ue := (*neturl.Error)(nil); errors.As(err, &ue) {
		return fmt.Errorf("GET %s: %w", url, ue.Err)
	} else if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// insecureHealthClient reads health endpoints over TLS without checking
// the server: they carry nothing secret and send nothing, and a health
// check has no mesh certificate to check with.
var insecureHealthClient = &http.Client{Transport: &http.Transport{
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
}}
