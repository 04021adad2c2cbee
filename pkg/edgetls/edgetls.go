// Package edgetls is the public edge's TLS: an operator's certificate files, or certificates obtained and renewed
// over ACME with certmagic; the plain-HTTP port's handler (challenges, redirect); expiry metrics.
//
// The gateway reads its Config from the environment with Read, calls Start, serves its main listener through
// tls.NewListener(ln, edge.TLSConfig()) with edge.HSTS() on every response, and serves edge.PlainHandler() on
// Config.HTTPAddr. ACME challenges reach those two listeners: HTTP-01 the plain one, TLS-ALPN-01 the TLS one;
// certmagic never opens a port of its own.
package edgetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/envconfig"
)

// The environment the gateway reads (docs/configuration.md).
const (
	EnvCertFile      = "LUCID_TLS_CERT_FILE"
	EnvKeyFile       = "LUCID_TLS_KEY_FILE"
	EnvACMEDomains   = "LUCID_ACME_DOMAINS"
	EnvACMEEmail     = "LUCID_ACME_EMAIL"
	EnvACMEDirectory = "LUCID_ACME_DIRECTORY"
	EnvACMECARoot    = "LUCID_ACME_CA_ROOT"
	EnvACMEStorage   = "LUCID_ACME_STORAGE"
	EnvHTTPAddr      = "LUCID_HTTP_ADDR"
	EnvHTTPSPort     = "LUCID_HTTPS_PORT"
	EnvHSTSMaxAge    = "LUCID_HSTS_MAX_AGE"
)

// Defaults of the keys above.
const (
	DefaultDirectory  = "https://acme-v02.api.letsencrypt.org/directory"
	DefaultHTTPAddr   = ":8079"
	DefaultHTTPSPort  = 443
	DefaultHSTSMaxAge = 365 * 24 * time.Hour

	// fileCheckInterval is how often certificate files are looked at for a change: the contract's
	// "at least once a minute".
	fileCheckInterval = time.Minute
)

// Config is the edge's TLS configuration. Without CertFile and ACME it is off (Enabled is false).
type Config struct {
	// CertFile and KeyFile are an operator's certificate (with its chain) and key, PEM.
	CertFile, KeyFile string
	// ACME, when not nil, obtains and renews certificates instead.
	ACME *ACME
	// HTTPAddr is where the plain-HTTP listener (PlainHandler) is served, LUCID_HTTP_ADDR.
	HTTPAddr string
	// HTTPSPort is the public HTTPS port clients use, for the plain listener's redirects, LUCID_HTTPS_PORT.
	HTTPSPort int
	// HSTSMaxAge is Strict-Transport-Security's max-age; 0 sends none.
	HSTSMaxAge time.Duration

	// fileCheckInterval overrides how often the files are looked at; tests shorten it.
	fileCheckInterval time.Duration
}

// ACME is where certificates come from when they are obtained automatically.
type ACME struct {
	// Domains are the DNS names certificates are obtained for, one certificate each.
	Domains []string
	// Email is the ACME account's contact (optional); Directory the ACME directory URL; CARootFile a PEM file
	// the directory's own HTTPS is verified against instead of the system roots (optional); StorageDir where
	// certificates, keys and the account are kept.
	Email, Directory, CARootFile, StorageDir string
	// RenewCheckInterval: how often certificates are checked for renewal (certmagic's default 10m); tests shorten it.
	RenewCheckInterval time.Duration
	// RenewalWindowRatio: renew when this fraction of the lifetime is left (certmagic's default 1/3); tests may set it.
	RenewalWindowRatio float64

	// disableHTTP01 and disableTLSALPN01 leave one challenge type out, so a test proves the other alone.
	disableHTTP01, disableTLSALPN01 bool
}

// Read reads the edge's configuration from r. Problems are recorded in r (r.Fail), for the caller's one check of
// r.Err; dataDir is the gateway's data directory, where ACME's storage lives by default.
func Read(r *envconfig.Reader, dataDir string) Config {
	c := Config{
		CertFile:  r.String(EnvCertFile, ""),
		KeyFile:   r.String(EnvKeyFile, ""),
		HTTPAddr:  r.ListenAddr(EnvHTTPAddr, DefaultHTTPAddr),
		HTTPSPort: r.Int(EnvHTTPSPort, DefaultHTTPSPort, 1, 65535),
	}
	maxAge := r.Int(EnvHSTSMaxAge, int(DefaultHSTSMaxAge/time.Second), 0, 10*int(DefaultHSTSMaxAge/time.Second))
	c.HSTSMaxAge = time.Duration(maxAge) * time.Second
	if (c.CertFile == "") != (c.KeyFile == "") {
		r.Fail(EnvCertFile, "and %s must be set together", EnvKeyFile)
	}

	domains := r.String(EnvACMEDomains, "")
	if domains == "" {
		for _, k := range []string{EnvACMEEmail, EnvACMEDirectory, EnvACMECARoot, EnvACMEStorage} {
			if r.String(k, "") != "" {
				r.Fail(k, "is set but %s is not: ACME needs the names to obtain certificates for", EnvACMEDomains)
			}
		}
		return c
	}
	a := &ACME{
		Email:      r.String(EnvACMEEmail, ""),
		CARootFile: r.String(EnvACMECARoot, ""),
		StorageDir: r.String(EnvACMEStorage, filepath.Join(dataDir, "acme")),
		Directory:  DefaultDirectory,
	}
	for d := range strings.SplitSeq(domains, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		if err := checkDomain(d); err != nil {
			r.Fail(EnvACMEDomains, "%q: %v", d, err)
			continue
		}
		if !slices.Contains(a.Domains, d) {
			a.Domains = append(a.Domains, d)
		}
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		r.Fail(EnvACMEEmail, "%q is not an email address", a.Email)
	}
	if u := r.URL(EnvACMEDirectory); u != nil {
		if u.Scheme != "https" {
			r.Fail(EnvACMEDirectory, "must be an https URL (the ACME account key and certificates travel over it)")
		}
		a.Directory = u.String()
	}
	if a.CARootFile != "" {
		if _, err := readRoots(a.CARootFile); err != nil {
			r.Fail(EnvACMECARoot, "%v", err)
		}
	}
	if c.CertFile != "" {
		r.Fail(EnvACMEDomains, "and %s are both set: choose ACME or an operator's certificate, not both", EnvCertFile)
	}
	c.ACME = a
	return c
}

// checkDomain accepts what HTTP-01 and TLS-ALPN-01 can prove: a DNS name, no wildcard, no IP address.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("an empty name (a stray comma?)")
	case strings.HasPrefix(d, "*."):
		return errors.New("a wildcard needs the DNS-01 challenge, which the gateway does not do; list each name")
	case net.ParseIP(d) != nil:
		return errors.New("an IP address; give the DNS names clients use")
	case len(d) > 253:
		return errors.New("longer than 253 characters")
	}
	for label := range strings.SplitSeq(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("not a DNS name (each dot-separated label has 1 to 63 letters, digits or inner hyphens)")
		}
		for _, ch := range label {
			if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') && ch != '-' {
				return fmt.Errorf("not a DNS name (%q; an international name goes in its xn-- form)", ch)
			}
		}
	}
	return nil
}

// readRoots reads a PEM file of CA certificates.
func readRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// Enabled reports whether the edge serves TLS: certificate files or ACME are configured.
func (c Config) Enabled() bool { return c.CertFile != "" || c.ACME != nil }

// Edge serves the public edge's certificates. Its methods are safe for concurrent use.
type Edge struct {
	cfg       Config
	logger    *slog.Logger
	tlsConfig *tls.Config
	hsts      string

	renewals   prometheus.Counter
	reg        prometheus.Registerer
	registered []prometheus.Collector

	files *fileCert  // certificate files mode
	acme  *acmeCerts // ACME mode

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Start loads the files or starts managing the ACME certificates. It does not wait for a first ACME certificate
// (the plain listener must already answer HTTP-01): handshakes before it fail, and the log says why. The edge's
// background work (file checks, ACME renewals) runs until Close or until ctx ends. reg may be nil.
func Start(ctx context.Context, c Config, logger *slog.Logger, reg prometheus.Registerer) (*Edge, error) {
	if !c.Enabled() {
		return nil, errors.New("edge TLS: neither certificate files nor ACME domains are configured")
	}
	if c.CertFile != "" && c.ACME != nil {
		return nil, fmt.Errorf("edge TLS: %s and %s are both set", EnvCertFile, EnvACMEDomains)
	}
	if c.HTTPSPort == 0 {
		c.HTTPSPort = DefaultHTTPSPort
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Edge{
		cfg:    c,
		logger: logger,
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lucid_gateway_tls_certificate_renewals_total",
			Help: "Certificates obtained or renewed over ACME, or reloaded from changed files.",
		}),
		reg: reg,
	}
	if c.HSTSMaxAge > 0 {
		e.hsts = "max-age=" + strconv.FormatInt(int64(c.HSTSMaxAge/time.Second), 10)
	}
	e.tlsConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/1.1 only: the gateway speaks nothing else to clients.
		NextProtos: []string{"http/1.1"},
	}

	ctx, e.cancel = context.WithCancel(ctx)
	var err error
	if c.ACME != nil {
		err = e.startACME(ctx)
	} else {
		err = e.startFiles(ctx)
	}
	if err == nil {
		err = e.register(reg)
	}
	if err != nil {
		_ = e.Close()
		return nil, err
	}
	return e, nil
}

// TLSConfig is the main listener's TLS configuration: tls.NewListener(ln, e.TLSConfig()). Each call returns a
// copy the caller may change.
func (e *Edge) TLSConfig() *tls.Config { return e.tlsConfig.Clone() }

// HSTS is the Strict-Transport-Security value for every HTTPS response, "" when it is off.
func (e *Edge) HSTS() string { return e.hsts }

// PlainHandler serves the plain-HTTP listener (Config.HTTPAddr): ACME HTTP-01 challenges, and a 308 redirect to
// HTTPS, path and query kept, for everything else. The redirect goes to the request's host only when it is one of
// the edge's names (an ACME domain, or a name or address the certificate files cover); any other host (a LAN address, a name the operator never configured, a forged
// Host) is sent to the edge's own first name (redirectHost), so the plain port never points a client at a host
// of the requester's choosing.
func (e *Edge) PlainHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 {
			// Nothing here reads a body: the connection ends with the
			// answer rather than wait for the body to be sent and dropped,
			// before the answer (net/http's discard) or after it (its
			// close).
			w.Header().Set("Connection", "close")
			_ = http.NewResponseController(w).SetReadDeadline(time.Unix(1, 0))
		}
		// Challenges only for the names asked for: certmagic looks any
		// other Host up in its storage too, and logs a failed look-up (a
		// name too long for a file) with the request's URI, Host and
		// User-Agent, whole: kilobytes of log for each request.
		if e.acme != nil && e.acme.owns(r.Host) && e.acme.issuer.HandleHTTPChallenge(w, r) {
			return
		}
		e.redirect(w, r)
	})
}

func (e *Edge) redirect(w http.ResponseWriter, r *http.Request) {
	host, ok := e.redirectHost(r.Host)
	if !ok {
		http.Error(w, "this address has no HTTPS name to redirect to: ask for one of the names its certificate holds",
			http.StatusMisdirectedRequest)
		return
	}
	authority := host
	if e.cfg.HTTPSPort != DefaultHTTPSPort {
		authority = net.JoinHostPort(host, strconv.Itoa(e.cfg.HTTPSPort))
	} else if strings.Contains(host, ":") {
		authority = "[" + host + "]" // an IPv6 literal
	}
	// Only a path goes after the authority: an absolute-form target with an opaque part
	// (GET http:@evil.example/x), which net/http accepts, would otherwise move the redirect's host.
	path := r.URL.EscapedPath()
	if path == "" && r.URL.Opaque == "" && r.URL.Host != "" {
		path = "/" // an absolute form without a path: GET http://pi.example.net
	}
	if r.URL.Opaque != "" || !strings.HasPrefix(path, "/") {
		http.Error(w, "the request target is not a path", http.StatusBadRequest)
		return
	}
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}
	// 308 keeps the method and body, so a POST sent to the wrong port is repeated as it was.
	http.Redirect(w, r, "https://"+authority+path, http.StatusPermanentRedirect)
}

// hostOf is a request's Host as names compare: without its port or an
// IPv6 literal's brackets, in lower case, and without a trailing dot
// (pi.example.net. names the same host).
func hostOf(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// redirectHost is the host a plain request for host is redirected to: host itself (in lower case, without a
// trailing dot) when it is one of the edge's names, else the edge's first name (ACME's first domain; the certificate's first DNS name that is
// not a wildcard, or its first IP address). ok is false when there is neither (no certificate yet, or a
// wildcard-only certificate that does not cover host).
func (e *Edge) redirectHost(host string) (string, bool) {
	host = hostOf(host)
	switch {
	case e.acme != nil:
		if slices.Contains(e.acme.domains, host) {
			return host, true
		}
		return e.acme.domains[0], true
	case e.files != nil:
		c := e.files.current()
		if c == nil || c.Leaf == nil {
			return "", false
		}
		if host != "" && c.Leaf.VerifyHostname(host) == nil {
			return host, true
		}
		for _, name := range c.Leaf.DNSNames {
			if !strings.HasPrefix(name, "*.") {
				return strings.ToLower(name), true
			}
		}
		if len(c.Leaf.IPAddresses) > 0 {
			return c.Leaf.IPAddresses[0].String(), true
		}
	}
	return "", false
}

// NotAfter is the earliest NotAfter among the certificates in use (zero before the first).
func (e *Edge) NotAfter() time.Time {
	var first time.Time
	for _, leaf := range e.leaves() {
		if first.IsZero() || leaf.NotAfter.Before(first) {
			first = leaf.NotAfter
		}
	}
	return first
}

// leaves are the certificates the edge serves now, one per name.
func (e *Edge) leaves() []*x509.Certificate {
	switch {
	case e.files != nil:
		if c := e.files.current(); c != nil {
			return []*x509.Certificate{c.Leaf}
		}
	case e.acme != nil:
		return e.acme.leaves()
	}
	return nil
}

// Close stops the background work (file checks, ACME maintenance) and unregisters the metrics.
func (e *Edge) Close() error {
	e.closeOnce.Do(func() {
		e.cancel()
		e.wg.Wait()
		if e.acme != nil {
			e.acme.cache.Stop()
		}
		if e.reg != nil {
			for _, c := range e.registered {
				e.reg.Unregister(c)
			}
		}
	})
	return nil
}

// certName is what a certificate is called in metrics and logs: its first DNS name, else its subject's CN.
func certName(leaf *x509.Certificate) string {
	if len(leaf.DNSNames) > 0 {
		return leaf.DNSNames[0]
	}
	return leaf.Subject.CommonName
}

// onObtained counts a certificate obtained or renewed over ACME.
func (e *Edge) onObtained(ctx context.Context, data map[string]any) {
	e.renewals.Inc()
	e.logger.LogAttrs(ctx, slog.LevelInfo, "edge TLS: certificate obtained",
		slog.Any("name", data["identifier"]), slog.Any("renewal", data["renewal"]))
}
