package meshtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshca"
)

// Remote is an Issuer backed by the mesh controller at a URL.
//
// The service's enrolment token (meshapi.EnrolmentToken: what its
// LUCID_MESH_TOKEN holds) is the root of trust: the bundle is fetched over
// a connection that is not yet verified (no credential is sent on it) and
// accepted only if its MAC, keyed by the token, matches; the token itself
// then goes only to a server whose leaf verifies against that bundle and
// names the mesh controller. The controller accepts the token for that
// one service's leaf only.
type Remote struct {
	url, token string
	timeout    time.Duration
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
}

// NewRemote returns an issuer for the controller at url, which must be
// https: the token is never sent in the clear. token is the enrolment
// token of the service the leaves are for.
func NewRemote(url, token string) *Remote {
	return &Remote{url: url, token: token, timeout: 10 * time.Second}
}

// SetDialContext makes r reach the controller through dial rather than
// the system's TCP dialer: a controller behind another transport, or on
// a test's in-memory network. It is not safe to call while r is in use.
func (r *Remote) SetDialContext(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	r.dial = dial
}

// Bundle fetches the trust bundle as service is given it, and
// authenticates it with service's enrolment token.
func (r *Remote) Bundle(ctx context.Context, service string) ([]*x509.Certificate, error) {
	bootstrap := &http.Client{Timeout: r.timeout, Transport: &http.Transport{
		DialContext: r.dial,
		// Nothing secret is sent on this connection and the answer is
		// authenticated by its MAC, so the server need not be known yet.
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true},
	}}
	defer bootstrap.CloseIdleConnections()
	return meshapi.New(r.url, r.token, bootstrap).Bundle(ctx, service)
}

// Issue fetches the bundle, then asks the controller, verified against it,
// for a leaf.
func (r *Remote) Issue(ctx context.Context, service string, csrPEM []byte) (chain, bundle []*x509.Certificate, err error) {
	if !strings.HasPrefix(r.url, "https://") {
		return nil, nil, fmt.Errorf("mesh URL %s: must be https, so the enrolment token is not sent in the clear", r.url)
	}
	bundle, err = r.Bundle(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range bundle {
		pool.AddCert(c)
	}
	verified := &http.Client{Timeout: r.timeout, Transport: &http.Transport{
		DialContext: r.dial,
		TLSClientConfig: &tls.Config{
			MinVersion:         tls.VersionTLS13,
			InsecureSkipVerify: true, // checked below, by SPIFFE ID
			VerifyConnection: func(cs tls.ConnectionState) error {
				name, err := verifyChain(cs.PeerCertificates, pool, time.Now(), x509.ExtKeyUsageServerAuth)
				if err != nil {
					return fmt.Errorf("mesh controller certificate: %w", err)
				}
				if name != catalog.MeshService {
					return fmt.Errorf("mesh controller certificate names %q", name)
				}
				return nil
			},
		},
	}}
	defer verified.CloseIdleConnections()
	issued, err := meshapi.New(r.url, r.token, verified).Issue(ctx, service, csrPEM)
	if err != nil {
		return nil, nil, err
	}
	if chain, err = meshca.DecodeCerts([]byte(issued.CertificateChain)); err != nil {
		return nil, nil, fmt.Errorf("mesh: certificate chain: %w", err)
	}
	// The bundle sent with the leaf is the newer of the two, and comes from
	// the verified server.
	if bundle, err = meshca.DecodeCerts([]byte(issued.CABundle)); err != nil {
		return nil, nil, fmt.Errorf("mesh: trust bundle: %w", err)
	}
	return chain, bundle, nil
}

// Local is an Issuer backed by a CA in the same process: the mesh
// controller's own identity, and tests.
func Local(ca *meshca.CA) Issuer { return local{ca} }

type local struct{ ca *meshca.CA }

func (l local) Bundle(context.Context, string) ([]*x509.Certificate, error) {
	return l.ca.Bundle(), nil
}

func (l local) Issue(ctx context.Context, service string, csrPEM []byte) (chain, bundle []*x509.Certificate, err error) {
	csr, err := meshca.ParseCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := l.ca.Sign(ctx, csr, service)
	if err != nil {
		return nil, nil, err
	}
	return leaf.Chain, l.ca.Bundle(), nil
}
