// Package meshapi is the typed HTTP client of the mesh controller and the
// JSON shapes of its API: certificates, the trust bundle, the service
// registry and Envoy bootstraps.
//
// The trust bundle is fetched before the caller trusts anything, so the
// controller authenticates it with an HMAC keyed by the asking service's
// enrolment token (EnrolmentToken) over a fresh nonce of the caller's and
// the bundle (header BundleMACHeader): a service holding its token accepts
// only the bundle the controller holds now, not one replayed from before a
// rotation.
package meshapi

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/meshca"
)

// ConsulReadyCheck is the check on the controller's /ready that says it
// registers the stack in Consul; a controller without it runs with static
// discovery, and nothing is registered.
const ConsulReadyCheck = "consul"

// BundleMACHeader carries the hex HMAC-SHA256, keyed by the enrolment
// token of the service named in the request, of the request's nonce, a
// newline, and the bundle body.
const BundleMACHeader = "Lucid-Bundle-Mac"

// NonceLen is the length of the nonce a caller sends for the bundle: 16
// random bytes in hex. The MAC covers nonce and bundle together, so a
// nonce of any other shape is refused rather than signed.
const NonceLen = 32

// BundleMAC is the MAC the controller sends with bundle for nonce; token is
// the enrolment token of the service that asked.
func BundleMAC(token, nonce string, bundle []byte) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(nonce))
	m.Write([]byte{'\n'})
	m.Write(bundle)
	return hex.EncodeToString(m.Sum(nil))
}

// IssueRequest asks for a leaf.
type IssueRequest struct {
	// CSR is a PEM certificate request signed by the caller's EC P-256 key.
	CSR string `json:"csr"`
}

// Issued is a leaf with its chain and the bundle to trust.
type Issued struct {
	// CertificateChain is the leaf first, then intermediates, in PEM.
	CertificateChain string `json:"certificate_chain"`
	// CABundle is the roots to trust, in PEM.
	CABundle string    `json:"ca_bundle"`
	NotAfter time.Time `json:"not_after"`
	SPIFFEID string    `json:"spiffe_id"`
}

// Rotated answers a root rotation.
type Rotated struct {
	// Fingerprint is the hex SHA-256 of the new root.
	Fingerprint string `json:"fingerprint"`
}

// Instance is one registered instance of a service, as Consul sees it.
type Instance struct {
	ID      string            `json:"id"`
	Service string            `json:"service"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	// Status is passing, warning or critical. A check's output is never
	// passed on: it is whatever Consul fetched, and the controller is no
	// relay for it.
	Status string `json:"status"`
}

// Registration registers a service that runs outside the stack.
type Registration struct {
	Name    string            `json:"name"`
	ID      string            `json:"id,omitempty"` // default name-address-port
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	// Check is the HTTP(S) URL Consul polls, on the registration's own
	// address and port (the scheme's default port counts); empty means no
	// check.
	Check string `json:"check,omitempty"`
	// Interval of the check (default 10s).
	Interval string `json:"interval,omitempty"`
}

// Client talks to the mesh controller.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the controller at base that sends token as its
// bearer credential: a service's enrolment token (to obtain its leaf and
// check the bundle), or the operator token (to rotate the root and
// register outside services). Over mTLS a mesh member needs none to read
// the registry. hc carries the transport (nil: a plain client).
func New(base, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(base, "/"), token: token, http: hc}
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	r := api.Request{Method: method, URL: c.base + path, Token: c.token}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r.Body = b
	}
	if err := api.Do(ctx, c.http, r, out); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	return nil
}

// Bundle fetches the trust bundle as service sees it and checks its MAC
// against the client's token, which must be service's enrolment token. It
// sends no credential, so it may use a connection that is not yet trusted.
func (c *Client) Bundle(ctx context.Context, service string) ([]*x509.Certificate, error) {
	var raw [NonceLen / 2]byte
	_, _ = rand.Read(raw[:])
	nonce := hex.EncodeToString(raw[:])
	q := url.Values{"nonce": {nonce}, "service": {service}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/certificates/ca?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mesh: trust bundle: %w", api.DecodeError(resp))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("mesh: trust bundle: %w", err)
	}
	// The controller sends a MAC for each enrolment token it accepts (the
	// current one and, after a rotation, the previous ones).
	want, matched := []byte(BundleMAC(c.token, nonce, body)), false
	for _, got := range resp.Header.Values(BundleMACHeader) {
		if hmac.Equal([]byte(got), want) {
			matched = true
		}
	}
	if !matched {
		return nil, fmt.Errorf("mesh: the trust bundle's MAC does not match %s's enrolment token (wrong LUCID_MESH_TOKEN, or not the mesh controller)", service)
	}
	return meshca.DecodeCerts(body)
}

// Issue asks for a leaf for service, from a PEM certificate request; the
// client's token must be service's enrolment token.
func (c *Client) Issue(ctx context.Context, service string, csrPEM []byte) (*Issued, error) {
	var out Issued
	if err := c.do(ctx, http.MethodPost, "/certificates/"+url.PathEscape(service), IssueRequest{CSR: string(csrPEM)}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Rotate replaces the mesh root (the operator's).
func (c *Client) Rotate(ctx context.Context) (*Rotated, error) {
	var out Rotated
	if err := c.do(ctx, http.MethodPost, "/ca/rotate", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Services lists every registered instance.
func (c *Client) Services(ctx context.Context) ([]Instance, error) {
	return c.instances(ctx, "/services")
}

// Service lists the instances of one service.
func (c *Client) Service(ctx context.Context, name string) ([]Instance, error) {
	return c.instances(ctx, "/services/"+url.PathEscape(name))
}

func (c *Client) instances(ctx context.Context, path string) ([]Instance, error) {
	var out struct {
		Instances []Instance `json:"instances"`
	}
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out.Instances, nil
}

// Register registers a service that runs outside the stack (the
// operator's).
func (c *Client) Register(ctx context.Context, r Registration) error {
	return c.do(ctx, http.MethodPost, "/services/register", r, nil)
}

// Deregister removes every instance of an outside service (the
// operator's).
func (c *Client) Deregister(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/services/"+url.PathEscape(name), nil, nil)
}

// EnvoyBootstrap returns the Envoy bootstrap YAML for service's sidecar.
func (c *Client) EnvoyBootstrap(ctx context.Context, service string) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, "/envoy/"+url.PathEscape(service)+"/bootstrap", nil, &out)
	return out, err
}
