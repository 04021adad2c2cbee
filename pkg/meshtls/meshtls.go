// Package meshtls gives a Lucid service its mesh identity and speaks mTLS
// with it: it obtains a leaf certificate (spiffe://lucid/service/<name>)
// from the mesh controller, renews it at a random point between 60 % and
// 90 % of its life, swaps it in without touching open connections, and
// builds the TLS configurations for serving and for calling other services,
// each side checking the other's SPIFFE ID against the allow list.
//
// Verification is done here rather than by crypto/tls's hostname check:
// peers are named by SPIFFE ID, not DNS, and the trust bundle changes at
// run time (a root rotation), which a fixed tls.Config pool cannot follow.
package meshtls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pickme/lucid/pkg/meshca"
)

// Issuer is where an identity gets its certificates: the mesh controller
// over HTTP (Remote), or the controller's own CA in-process.
type Issuer interface {
	// Bundle returns the roots to trust, as service (the name the
	// issuer's credential is for) is given them.
	Bundle(ctx context.Context, service string) ([]*x509.Certificate, error)
	// Issue signs a leaf for service from a PEM certificate request and
	// returns its chain (leaf first) and the current bundle.
	Issue(ctx context.Context, service string, csrPEM []byte) (chain, bundle []*x509.Certificate, err error)
}

// Renewal window, as fractions of a leaf's life. A random point spreads the
// renewals of many services apart.
const (
	renewFrom = 0.6
	renewTo   = 0.9
)

// Options tune an identity.
type Options struct {
	// Logger receives renewals and refused peers (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnRenew, if set, is called after every new leaf is in place.
	OnRenew func(notAfter time.Time)
}

// Identity is a service's current leaf and trust bundle. It is safe for
// concurrent use; TLS configs built from it always see the latest leaf.
type Identity struct {
	service string
	issuer  Issuer
	opts    Options

	cert  atomic.Pointer[tls.Certificate]
	roots atomic.Pointer[x509.CertPool]

	mu     sync.Mutex
	issued time.Time
	expiry time.Time
}

// Obtain gets service's first leaf from issuer, retrying with backoff until
// ctx ends (the controller may still be starting). The returned identity
// renews only while Run runs.
func Obtain(ctx context.Context, service string, issuer Issuer, opts Options) (*Identity, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	id := &Identity{service: service, issuer: issuer, opts: opts}
	delay := 100 * time.Millisecond
	for {
		err := id.renew(ctx)
		if err == nil {
			return id, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("mesh identity for %s: %w", service, err)
		}
		opts.Logger.Warn("mesh certificate not obtained yet; retrying", "error", err, "in", delay.String())
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("mesh identity for %s: %w", service, err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// Service is the name this identity speaks for.
func (id *Identity) Service() string { return id.service }

// Certificate is the current leaf with its chain and key.
func (id *Identity) Certificate() *tls.Certificate { return id.cert.Load() }

// NotAfter is the current leaf's expiry.
func (id *Identity) NotAfter() time.Time {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.expiry
}

// Run renews the leaf until ctx ends. A failed renewal is retried with
// backoff; the current leaf keeps serving meanwhile.
func (id *Identity) Run(ctx context.Context) {
	for {
		id.mu.Lock()
		life := id.expiry.Sub(id.issued)
		at := id.issued.Add(time.Duration(float64(life) * (renewFrom + (renewTo-renewFrom)*mrand.Float64())))
		id.mu.Unlock()
		wait := at.Sub(id.opts.Now())
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		delay := time.Second
		for {
			err := id.renew(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			left := time.Until(id.NotAfter())
			id.opts.Logger.Warn("mesh certificate renewal failed; retrying", "error", err, "expires_in", left.Round(time.Second).String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(retryWait(delay, left)):
			}
			delay = min(2*delay, 30*time.Second)
		}
	}
}

// retryWait is the pause before another renewal attempt: the backoff,
// shortened while the leaf still has time left so that a renewal lands
// before it expires; once it has expired, the plain backoff (no storm).
func retryWait(backoff, left time.Duration) time.Duration {
	if left <= 0 {
		return backoff
	}
	return min(backoff, max(left/4, 100*time.Millisecond))
}

// renew makes a fresh key, has it certified, and swaps leaf and bundle in.
func (id *Identity) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	// The CA names the leaf itself; the request only proves the key.
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.service}}, key)
	if err != nil {
		return err
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})
	chain, bundle, err := id.issuer.Issue(ctx, id.service, csrPEM)
	if err != nil {
		return err
	}
	if len(chain) == 0 || len(bundle) == 0 {
		return errors.New("mesh: empty certificate chain or bundle")
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return errors.New("mesh: the issued certificate is not for our key")
	}
	if name, ok := meshca.ServiceOf(leaf); !ok || name != id.service {
		return fmt.Errorf("mesh: the issued certificate names %q, not %q", name, id.service)
	}
	pool := x509.NewCertPool()
	for _, c := range bundle {
		pool.AddCert(c)
	}
	// Check the new leaf against the new bundle before using either.
	if _, err := verifyChain(chain, pool, id.opts.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		return fmt.Errorf("mesh: the issued certificate does not verify: %w", err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	id.roots.Store(pool)
	id.cert.Store(tc)
	id.mu.Lock()
	id.issued, id.expiry = id.opts.Now(), leaf.NotAfter
	id.mu.Unlock()
	id.opts.Logger.Info("mesh certificate in place", "spiffe_id", meshca.SPIFFEID(id.service).String(), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	if id.opts.OnRenew != nil {
		id.opts.OnRenew(leaf.NotAfter)
	}
	return nil
}

// Authorizer decides whether the peer service may take part in a
// connection: as a caller (server side) or as the called (client side).
type Authorizer func(peer string) bool

// ServerTLS is the configuration of a service's listener. Clients may
// connect without a certificate (health checks and scrapes do; the HTTP
// layer then refuses everything else, see Caller); a client that presents
// one must hold a valid leaf whose service authorize accepts, or the
// handshake fails and the refusal is logged with the peer's identity.
func (id *Identity) ServerTLS(authorize Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return id.cert.Load(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			return id.checkPeer(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, authorize, "caller")
		},
	}
}

// ClientTLS is the configuration for calling other services: this
// identity's leaf is presented, and the server must hold a valid leaf whose
// service authorize accepts.
func (id *Identity) ClientTLS(authorize Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is VerifyConnection's: SPIFFE IDs, a live bundle.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.cert.Load(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return id.checkPeer(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, authorize, "server")
		},
	}
}

// Transport is an HTTP transport that speaks mTLS to Lucid services: it
// takes base's settings (nil: sensible defaults), uses ClientTLS, and sends
// requests for http:// URLs as https://, so service URLs need not change
// when the mesh is switched on.
func (id *Identity) Transport(base *http.Transport, authorize Authorizer) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	} else {
		base = base.Clone()
	}
	base.TLSClientConfig = id.ClientTLS(authorize)
	return upgrade{base}
}

// upgrade sends http:// requests as https://.
type upgrade struct{ base http.RoundTripper }

func (u upgrade) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" {
		r := *req
		url := *req.URL
		url.Scheme = "https"
		r.URL = &url
		req = &r
	}
	return u.base.RoundTrip(req)
}

// checkPeer verifies a peer's chain against the current bundle and its
// SPIFFE ID against authorize.
func (id *Identity) checkPeer(certs []*x509.Certificate, usage x509.ExtKeyUsage, authorize Authorizer, role string) error {
	if len(certs) == 0 {
		return errors.New("mesh: the peer presented no certificate")
	}
	peer := Describe(certs[0])
	name, err := verifyChain(certs, id.roots.Load(), id.opts.Now(), usage)
	if err == nil && authorize != nil && !authorize(name) {
		err = fmt.Errorf("service %q is not allowed here", name)
	}
	if err != nil {
		id.opts.Logger.Warn("mesh: refused "+role, "peer", peer, "reason", err.Error())
		return fmt.Errorf("mesh: refused %s %s: %w", role, peer, err)
	}
	return nil
}

// verifyChain checks certs (leaf first) against roots at now and returns
// the leaf's service name.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage) (string, error) {
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", err
	}
	name, ok := meshca.ServiceOf(certs[0])
	if !ok {
		return "", errors.New("the certificate carries no Lucid SPIFFE ID")
	}
	return name, nil
}

// Describe names a certificate's holder for logs: its SPIFFE ID if it has
// one, else its subject. The certificate need not be valid.
func Describe(c *x509.Certificate) string {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return "subject " + c.Subject.String()
}

// Caller returns the service that made r over mTLS, and false if the
// client presented no certificate. The handshake has already verified and
// authorized it.
func Caller(r *http.Request) (string, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", false
	}
	return meshca.ServiceOf(r.TLS.PeerCertificates[0])
}

// VerifyServerTLS is the configuration of a client that holds no mesh
// identity (the operator, reaching a service through SSH): it presents no
// certificate, and the server must hold a valid leaf, verified against
// bundle, that names service. The bundle is the caller's to authenticate
// (see Remote.Bundle).
func VerifyServerTLS(bundle []*x509.Certificate, service string) *tls.Config {
	pool := x509.NewCertPool()
	for _, c := range bundle {
		pool.AddCert(c)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verification is VerifyConnection's: by SPIFFE ID, not host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("mesh: the server presented no certificate")
			}
			name, err := verifyChain(cs.PeerCertificates, pool, time.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("mesh: server %s: %w", Describe(cs.PeerCertificates[0]), err)
			}
			if name != service {
				return fmt.Errorf("mesh: the server is %q, not %q", name, service)
			}
			return nil
		},
	}
}
