// Package runningstack reaches a running Lucid stack for the commands that
// check and measure it (`lucidctl validate phase2`, `lucidctl bench`): where
// it answers (the local stack, a gateway URL, or a lucid.yaml target
// through SSH), clients for it, tokens signed with its secret, and test
// anchors whose receipts are verified offline.
package runningstack

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
	"github.com/spf13/pflag"
)

// Endpoints are where a stack answers, and what it takes to call it.
type Endpoints struct {
	Gateway string            // public URL
	Service map[string]string // internal service URLs (the local stack, or a target through SSH)
	Consul  string            // likewise
	// ConsulToken, CONSUL_HTTP_TOKEN: Consul runs with ACLs and answers
	// nothing without one.
	ConsulToken string

	secret []byte // JWT_SECRET_KEY
	mesh   string // the mesh bootstrap token, if known
	// issuer and audience, LUCID_JWT_ISSUER and LUCID_JWT_AUDIENCE, go
	// into the tokens, for a gateway that requires them.
	issuer, audience string

	// dial, when set, reaches every address through an SSH connection to
	// the target: its internal ports listen on its loopback only.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	ssh  *sshx.Client

	// roots, from --cacert, verify the gateway's HTTPS instead of the
	// system's roots.
	roots *x509.CertPool

	mu         sync.Mutex
	transports [2]*http.Transport // verifying, insecure; made on first use
}

// Transport is the HTTP transport for the stack (through SSH for a
// target's internal ports), one of each kind per run, so that its idle
// connections (SSH channels, for a target) are shared and closed at the
// end.
func (e *Endpoints) Transport(insecure bool) *http.Transport {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := 0
	if insecure {
		i = 1
	}
	if e.transports[i] == nil {
		tr := &http.Transport{MaxIdleConnsPerHost: 256, TLSClientConfig: &tls.Config{RootCAs: e.roots, MinVersion: tls.VersionTLS12}}
		if insecure {
			tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // health endpoints only: nothing secret
		}
		if e.dial != nil {
			tr.DialContext = e.dial
		}
		e.transports[i] = tr
	}
	return e.transports[i]
}

// Client is an HTTP client for the stack.
func (e *Endpoints) Client(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: e.Transport(false)}
}

// Insecure is a client that reads the services' health over TLS without
// a certificate check.
func (e *Endpoints) Insecure(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: e.Transport(true)}
}

// Close drops the idle connections and ends the SSH connection, if any.
func (e *Endpoints) Close() {
	for _, tr := range e.transports {
		if tr != nil {
			tr.CloseIdleConnections()
		}
	}
	if e.ssh != nil {
		_ = e.ssh.Close() // nothing was written through it that could be lost
	}
}

// Flags choose the stack: the flags --target, --port-offset, --env-file
// and the SSH flags.
type Flags struct {
	target     string
	portOffset int
	envFile    string
	// caCert is a PEM file of CAs the gateway's HTTPS is verified
	// against, as curl's --cacert.
	caCert string
	// For a target of lucid.yaml, whose internal ports are reached
	// through SSH.
	ssh cli.SSHFlags
}

// Add registers the flags.
func (f *Flags) Add(fs *pflag.FlagSet) {
	fs.StringVar(&f.target, "target", "", "local (default), a gateway URL, or a target of lucid.yaml (reached through SSH)")
	fs.IntVar(&f.portOffset, "port-offset", 0, "the local stack's --port-offset")
	fs.StringVar(&f.envFile, "env-file", "", "env file with JWT_SECRET_KEY (default: lucid.yaml's local.env_file)")
	fs.StringVar(&f.caCert, "cacert", "", "trust the CA certificates in this PEM `FILE` for the gateway's HTTPS (a private CA), instead of the system's")
	f.ssh.Add(fs)
}

// Resolve finds the stack's endpoints: the local one (lucidctl up), a
// gateway URL, or a target of lucid.yaml (its gateway). The caller closes
// them.
func (f Flags) Resolve(ctx context.Context, env *cli.Env) (*Endpoints, error) {
	cfg, err := env.Config()
	if err != nil {
		return nil, err
	}
	path := f.envFile
	if path == "" {
		path = cfg.Abs(cfg.Local.EnvFile)
	}
	vars, err := envfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		vars = map[string]string{}
	} else if err != nil {
		return nil, err
	}
	e := &Endpoints{Service: map[string]string{}, mesh: vars["LUCID_MESH_TOKEN"]}
	if f.caCert != "" {
		pem, err := os.ReadFile(f.caCert)
		if err != nil {
			return nil, cli.Usage(fmt.Errorf("--cacert: %w", err))
		}
		e.roots = x509.NewCertPool()
		if !e.roots.AppendCertsFromPEM(pem) {
			return nil, cli.Usage(fmt.Errorf("--cacert %s holds no PEM certificate", f.caCert))
		}
	}
	secret, source := env.Getenv("JWT_SECRET_KEY"), "the environment"
	if secret == "" {
		secret, source = vars["JWT_SECRET_KEY"], path
	}
	if secret == "" {
		return nil, cli.WithHint(fmt.Errorf("JWT_SECRET_KEY is in neither the environment nor %s", path), "the benchmarks sign their own tokens with the gateway's secret")
	}
	// Refused once, here, rather than by every scenario that signs a token.
	if err := auth.CheckSecret([]byte(secret)); err != nil {
		return nil, fmt.Errorf("JWT_SECRET_KEY from %s: %w", source, err)
	}
	e.secret = []byte(secret)
	setting := func(key string) string {
		if v := env.Getenv(key); v != "" {
			return v
		}
		return vars[key]
	}
	e.issuer, e.audience = setting(auth.EnvIssuer), setting(auth.EnvAudience)
	e.ConsulToken = setting("CONSUL_HTTP_TOKEN")
	offset := f.portOffset
	loopback := func() {
		local := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port+offset) }
		gw, _ := catalog.Lookup("gateway")
		// HTTPS when the local gateway serves an operator's certificate.
		e.Gateway = e.scheme(ctx, local(gw.Port)) + "://" + local(gw.Port)
		for _, s := range catalog.Services {
			if !s.Public {
				e.Service[s.Name] = e.scheme(ctx, local(s.Port)) + "://" + local(s.Port)
			}
		}
		e.Consul = "http://" + local(8500)
	}
	switch {
	case f.target == "" || f.target == "local":
		loopback()
	case strings.HasPrefix(f.target, "http://") || strings.HasPrefix(f.target, "https://"):
		e.Gateway = strings.TrimRight(f.target, "/")
	default:
		// A deployed target: its gateway as clients reach it, and its
		// internal ports, which listen on its loopback only, through one
		// SSH connection as the Pi itself sees them.
		t, err := cfg.Target(f.target)
		if err != nil {
			return nil, cli.Usage(err)
		}
		c, err := f.ssh.Dial(ctx, env, t)
		if err != nil {
			return nil, err
		}
		e.ssh = c
		var direct net.Dialer
		e.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, _ := net.SplitHostPort(addr); host == "127.0.0.1" {
				return c.DialTCP(addr)
			}
			return direct.DialContext(ctx, network, addr)
		}
		loopback() // --port-offset applies on the target too (a stack rendered with one)
		e.Gateway = publicGateway(cfg, t, offset)
	}
	return e, nil
}

// publicGateway is where clients reach a target's gateway: with lucid.yaml's
// tls section, https on tls.https_port under the certificate's name (the
// first ACME domain, else the first DNS name of tls.cert_file), else
// plain HTTP on the catalog's port at the target's host.
func publicGateway(cfg *projectconfig.Config, t projectconfig.Target, offset int) string {
	gw, _ := catalog.Lookup(catalog.GatewayService)
	tc := cfg.TLS
	if tc == nil {
		return "http://" + net.JoinHostPort(t.Host, strconv.Itoa(gw.Port+offset))
	}
	host := t.Host
	switch {
	case tc.ACME != nil && len(tc.ACME.Domains) > 0:
		host = tc.ACME.Domains[0]
	case tc.CertFile != "":
		if data, err := os.ReadFile(cfg.Abs(tc.CertFile)); err == nil {
			if b, _ := pem.Decode(data); b != nil {
				if c, err := x509.ParseCertificate(b.Bytes); err == nil && len(c.DNSNames) > 0 {
					host = c.DNSNames[0]
				}
			}
		}
	}
	port := tc.HTTPSPort + offset
	if port == 443 {
		return "https://" + host
	}
	return "https://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// scheme tells whether a service speaks TLS (the mesh is on).
func (e *Endpoints) scheme(ctx context.Context, hostport string) string {
	c := e.Insecure(2 * time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hostport+"/health", nil)
	if resp, err := c.Do(req); err == nil {
		_ = resp.Body.Close()
		return "https"
	}
	return "http"
}

// Token signs a JWT for the gateway, valid for longer than the longest
// scenario (--duration is at most an hour) with its setup.
func (e *Endpoints) Token(sub string, tier auth.Tier) (string, error) {
	opts := auth.MintOptions{Subject: sub, Tier: tier, TTL: 2 * time.Hour, Now: time.Now(), Issuer: e.issuer}
	if e.audience != "" {
		opts.Audience = []string{e.audience}
	}
	tok, _, err := auth.Mint(e.secret, opts)
	return tok, err
}

// MeshClient is a client holding a mesh identity (the gateway's: it may
// call every service), for calling services directly over mTLS. The
// operator holds the controller's mesh token, and so can derive the
// gateway's enrolment token.
func (e *Endpoints) MeshClient(ctx context.Context) (*http.Client, error) {
	meshURL := e.Service[catalog.MeshService]
	if e.mesh == "" || !strings.HasPrefix(meshURL, "https://") {
		return nil, errors.New("the mesh is off or its token unknown")
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if e.dial != nil {
		return nil, errors.New("the mesh identity is obtained on the local stack only")
	}
	id, err := meshtls.Obtain(octx, "gateway", meshtls.NewRemote(meshURL, meshapi.EnrolmentToken(e.mesh, "gateway")), meshtls.Options{})
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: id.Transport(e.Transport(false), func(string) bool { return true })}, nil
}
