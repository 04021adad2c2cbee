// Package hostservices reaches one host's services with the operator
// credential, as the host itself sees them on its loopback: through an
// SSH connection for a deployed host, directly for the local stack. It is
// what the commands that act on the services' operator endpoints share
// (maintenance, backup).
//
// The operator token (LUCID_OPERATOR_TOKEN) leaves lucidctl only as the
// credential derived from it for each service on the host it runs on
// (auth.OperatorCredential, for the host's target name in lucid.yaml, or
// the local stack's local.name), the bearer token of the requests to that service
// alone: neither another service nor the same service on another host
// accepts it. With the mesh on, the services speak TLS
// with mesh certificates, and each is verified against the mesh's trust
// bundle, itself authenticated by the MAC the controller computes with an
// enrolment token the operator derives from LUCID_MESH_TOKEN.
package hostservices

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/meshtls"
)

// Credentials are the operator's: never printed, logged or put in an
// error.
type Credentials struct {
	Operator string // LUCID_OPERATOR_TOKEN
	// Mesh is the controller's LUCID_MESH_TOKEN, from which the enrolment
	// token that authenticates the trust bundle is derived.
	Mesh string
	// MeshOn says the env file switches mTLS on (LUCID_MESH_URL): a
	// service that answers in plain HTTP is then refused.
	MeshOn bool
	// Source names where the operator token came from.
	Source string
}

// ReadCredentials takes each value from the environment, else the env
// file at path ("": local.env_file of lucid.yaml).
func ReadCredentials(env *cli.Env, path string) (*Credentials, error) {
	vals, err := env.OperatorEnv(path)
	if err != nil {
		return nil, err
	}
	path, value := vals.Path, vals.Value
	c := &Credentials{}
	c.Operator, c.Source = value("LUCID_OPERATOR_TOKEN")
	c.Mesh, _ = value("LUCID_MESH_TOKEN")
	meshURL, _ := value("LUCID_MESH_URL")
	c.MeshOn = meshURL != ""
	if c.Operator == "" {
		return nil, cli.WithHint(fmt.Errorf("LUCID_OPERATOR_TOKEN is in neither the environment nor %s", path),
			"`lucidctl render` generates it into the env file the deployment is rendered from; use that file (--env-file)")
	}
	return c, nil
}

// Session is one host's services.
type Session struct {
	// Host names the host in lucid.yaml (for the local stack local.name,
	// auth.LocalHost by default): the operator's credentials are derived
	// for it.
	Host string
	// Dial connects to an address on the host's loopback (through SSH for
	// a deployed host).
	Dial func(addr string) (net.Conn, error)
	// Offset is the --port-offset the host's stack runs with.
	Offset int
	Creds  *Credentials
	// Say reports progress on stderr, named by host.
	Say func(format string, args ...any)
	// Deployed reads the secrets of the host's current release (release
	// "" when it has none), to explain a refused credential; nil for the
	// local stack (DeployedOf makes it for a deployed host).
	Deployed func(ctx context.Context) (release string, s deployfiles.DeployedSecrets, err error)

	mu         sync.Mutex
	probed     bool
	tls        bool
	bundle     []*x509.Certificate
	transports []*http.Transport
}

// DeployedOf is Session.Deployed for the host c deploys to: the secrets
// of its current release, read through its connection.
func DeployedOf(c deploy.Config) func(context.Context) (string, deployfiles.DeployedSecrets, error) {
	return func(ctx context.Context) (string, deployfiles.DeployedSecrets, error) {
		d, err := deploy.New(c)
		if err != nil {
			return "", deployfiles.DeployedSecrets{}, err
		}
		defer func() { _ = d.Close() }() // a read's
		return d.CurrentSecrets(ctx)
	}
}

// OperatorCredential is the operator's credential for service on the
// session's host, never for any other.
func (s *Session) OperatorCredential(service string) string {
	return auth.OperatorCredential(s.Creds.Operator, service, s.Host)
}

// EngineOperator is the operator's credential for the host's engine, for
// the engine client's calls that take it.
func (s *Session) EngineOperator() string {
	return s.OperatorCredential(catalog.EngineService)
}

// Addr is where service listens on the host's loopback.
func (s *Session) Addr(service string) string {
	svc, _ := catalog.Lookup(service)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(svc.Port+s.Offset))
}

// Transport dials every connection to addr through Dial.
func (s *Session) Transport(addr string, tc *tls.Config) *http.Transport {
	tr := &http.Transport{
		DialContext:     func(context.Context, string, string) (net.Conn, error) { return s.Dial(addr) },
		TLSClientConfig: tc,
	}
	s.mu.Lock()
	s.transports = append(s.transports, tr)
	s.mu.Unlock()
	return tr
}

// Close drops the idle connections of every transport made.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tr := range s.transports {
		tr.CloseIdleConnections()
	}
}

// TLS says whether the services speak TLS (the mesh is on); known once
// Secure has run.
func (s *Session) TLS() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tls
}

// Secure finds out whether the host's services speak TLS (the mesh is
// on), and if so fetches and authenticates the mesh's trust bundle.
func (s *Session) Secure(ctx context.Context) error {
	s.mu.Lock()
	done := s.probed
	s.mu.Unlock()
	if done {
		return nil
	}
	on, err := s.speaksTLS(ctx, s.Addr(catalog.MeshService))
	if err != nil {
		return err
	}
	if !on && s.Creds.MeshOn {
		return fmt.Errorf("the mesh controller at %s answers without TLS, but the env file sets LUCID_MESH_URL: refusing to send the operator token in the clear", s.Addr(catalog.MeshService))
	}
	var bundle []*x509.Certificate
	if on {
		if bundle, err = s.FetchBundle(ctx, true); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.probed, s.tls, s.bundle = true, on, bundle
	s.mu.Unlock()
	return nil
}

// speaksTLS tries a TLS handshake with addr; nothing is sent over it.
func (s *Session) speaksTLS(ctx context.Context, addr string) (bool, error) {
	conn, err := s.Dial(addr)
	if err != nil {
		return false, fmt.Errorf("is the stack running? %w", err)
	}
	defer conn.Close()
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// A probe only: whether the server speaks TLS; nothing is sent on it.
	tc := tls.Client(conn, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec // see above
	err = tc.HandshakeContext(hctx)
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	return err == nil, nil
}

// FetchBundle fetches the mesh's trust bundle (over TLS when the mesh is
// on) and checks its MAC with the operator's bundle key, derived from the
// mesh token (meshapi.OperatorBundle), which no container holds but the
// controller: the connection need not be trusted for that.
func (s *Session) FetchBundle(ctx context.Context, overTLS bool) ([]*x509.Certificate, error) {
	if s.Creds.Mesh == "" {
		return nil, cli.WithHint(errors.New("the mesh is on, and LUCID_MESH_TOKEN is in neither the environment nor the env file: the mesh's trust bundle cannot be authenticated"),
			"use the env file the deployment was rendered from (--env-file)")
	}
	scheme := "http"
	if overTLS {
		scheme = "https"
	}
	r := meshtls.NewRemote(scheme+"://"+s.Addr(catalog.MeshService), meshapi.EnrolmentToken(s.Creds.Mesh, meshapi.OperatorBundle))
	r.SetDialContext(func(context.Context, string, string) (net.Conn, error) {
		return s.Dial(s.Addr(catalog.MeshService))
	})
	bundle, err := r.Bundle(ctx, meshapi.OperatorBundle)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
			// A controller of a release from before the operator's key.
			return nil, cli.WithHint(fmt.Errorf("the mesh's trust bundle: %w", err), "deploy the host with this lucidctl first: its mesh controller predates the operator's bundle key")
		}
		return nil, fmt.Errorf("the mesh's trust bundle: %w", err)
	}
	return bundle, nil
}

// Client is an HTTP client for service that sends the operator's
// credential for it on the session's host, verifying the service by its
// mesh certificate when the mesh is on, and the service's base URL. timeout 0 leaves the request to ctx.
func (s *Session) Client(ctx context.Context, service string, timeout time.Duration) (*http.Client, string, error) {
	if s.Host == "" {
		return nil, "", errors.New("no host name to derive the operator's credentials for")
	}
	if err := s.Secure(ctx); err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	on, bundle := s.tls, s.bundle
	s.mu.Unlock()
	addr := s.Addr(service)
	scheme, tc := "http", (*tls.Config)(nil)
	svc, _ := catalog.Lookup(service)
	if on && !svc.Public {
		scheme, tc = "https", meshtls.VerifyServerTLS(bundle, service)
	}
	// The operator's credential for this service on this host alone: the
	// service cannot replay it to another, nor to itself on another host.
	hc := &http.Client{Timeout: timeout, Transport: api.WithBearer(s.Transport(addr, tc), s.OperatorCredential(service))}
	return hc, scheme + "://" + addr, nil
}

// Classify marks a refused operator credential as an authentication
// failure (exit 4), and says why the host's services refuse it, from what
// its current release holds (Deployed): a release rendered before
// per-host credentials must be deployed, for lucidctl never falls back to
// the older credentials, which another host's service could replay.
func (s *Session) Classify(ctx context.Context, err error) error {
	var ae *api.Error
	if !errors.As(err, &ae) || (ae.Status != http.StatusUnauthorized && ae.Status != http.StatusForbidden) {
		return err
	}
	if s.Deployed == nil {
		return cli.Auth(cli.WithHint(err, "the local stack's services hold credentials of another LUCID_OPERATOR_TOKEN, or were started by a lucidctl from before per-host operator credentials: use the env file it was started with (--env-file), or start it again with this lucidctl (lucidctl down, then lucidctl up)"))
	}
	const unknown = "the host's services hold credentials of another LUCID_OPERATOR_TOKEN: use the env file the deployment was rendered from (--env-file); a release rendered before per-host operator credentials holds none lucidctl sends: deploy the host"
	release, deployed, rerr := s.Deployed(ctx)
	if rerr != nil || release == "" {
		return cli.Auth(cli.WithHint(err, unknown))
	}
	why, hint := deployed.OperatorHashesOf(s.Creds.Operator).Refusal(s.Host)
	if why == "" {
		// Release holds the credentials lucidctl sent: the containers
		// run another (a deploy that did not finish).
		return cli.Auth(cli.WithHint(err, fmt.Sprintf("release %s of %s holds the credentials lucidctl sends, but its services refused them: do they run another release? lucidctl status --target %s", release, s.Host, s.Host)))
	}
	return cli.Auth(cli.WithHint(fmt.Errorf("%w: %s (release %s)", err, why, release), hint))
}
