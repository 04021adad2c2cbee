package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/pickme/lucid/pkg/deploy"
)

// gatewayTLS reads the local gateway's public certificates from its
// /metrics at base (its URL in the state file): over HTTPS when it
// speaks TLS, which the URL does not say. nil when it serves plain HTTP.
func gatewayTLS(ctx context.Context, base string) (*deploy.GatewayTLS, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("the gateway's URL %q: %w", base, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("the gateway's URL %q names no host", base)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	// On this machine's loopback: the certificate's public name does not
	// apply, and only the public metrics are read.
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // see above
	var d tls.Dialer
	d.Config = cfg
	scheme := "https"
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &rh):
		scheme = "http"
	case err != nil:
		return nil, fmt.Errorf("gateway at %s: %w", u.Host, err)
	default:
		_ = conn.Close() // a probe
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: (&net.Dialer{}).DialContext}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+u.Host+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("gateway /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("gateway /metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("gateway /metrics: %w", err)
	}
	return deploy.ParseGatewayTLS(body, time.Now())
}
