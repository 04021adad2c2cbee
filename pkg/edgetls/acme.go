package edgetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"
)

// acmeCerts are certificates obtained and renewed by certmagic.
type acmeCerts struct {
	domains []string
	magic   *certmagic.Config
	cache   *certmagic.Cache
	issuer  *certmagic.ACMEIssuer
	// lastHandshakeLog rate-limits the log line of handshakes that find no certificate (Unix nanoseconds).
	lastHandshakeLog atomic.Int64
}

// startACME sets certmagic up and, once the plain listener answers, has it load the certificates from storage or
// obtain them, and renew them from then on.
func (e *Edge) startACME(ctx context.Context) error {
	a := e.cfg.ACME
	if len(a.Domains) == 0 {
		return errors.New("edge TLS: ACME needs at least one domain")
	}
	if e.cfg.HTTPAddr == "" {
		return errors.New("edge TLS: ACME needs the plain-HTTP address (HTTP-01 challenges arrive there)")
	}
	host, portStr, err := net.SplitHostPort(e.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("edge TLS: %s %q: %w", EnvHTTPAddr, e.cfg.HTTPAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port == 0 {
		return fmt.Errorf("edge TLS: %s %q: ACME needs a fixed port", EnvHTTPAddr, e.cfg.HTTPAddr)
	}
	var roots *x509.CertPool
	if a.CARootFile != "" {
		if roots, err = readRoots(a.CARootFile); err != nil {
			return fmt.Errorf("edge TLS: %s: %w", EnvACMECARoot, err)
		}
	}
	if a.StorageDir == "" {
		return errors.New("edge TLS: ACME needs a storage directory")
	}
	// The account key and certificates' keys live here: the gateway's user alone reads them.
	if err := os.MkdirAll(a.StorageDir, 0o700); err != nil {
		return fmt.Errorf("edge TLS: %s: %w", EnvACMEStorage, err)
	}
	directory := a.Directory
	if directory == "" {
		directory = DefaultDirectory
	}

	zl := zap.New(newSlogCore(e.logger.With("component", "certmagic")))
	ac := &acmeCerts{domains: a.Domains}
	ac.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return ac.magic, nil },
		RenewCheckInterval: a.RenewCheckInterval,
		Logger:             zl,
	})
	ac.magic = certmagic.New(ac.cache, certmagic.Config{
		RenewalWindowRatio: a.RenewalWindowRatio,
		Storage:            &certmagic.FileStorage{Path: a.StorageDir},
		// A client that sends no server name (a health probe on 127.0.0.1) gets the first domain's certificate.
		DefaultServerName: a.Domains[0],
		OnEvent: func(ctx context.Context, event string, data map[string]any) error {
			if event == "cert_obtained" {
				e.onObtained(ctx, data)
			}
			return nil
		},
		ShouldEmitFunc: func(event string) bool { return event == "cert_obtained" },
		Logger:         zl,
	})
	ac.issuer = certmagic.NewACMEIssuer(ac.magic, certmagic.ACMEIssuer{
		CA:     directory,
		Email:  a.Email,
		Agreed: true, // configuring ACME is agreeing to the CA's terms; nobody is there to be asked
		// The challenges reach the edge's own listeners. The solvers' ports only decide whether certmagic opens
		// a listener of its own: pointed at the plain listener, bound already, it opens none.
		ListenHost:              host,
		AltHTTPPort:             port,
		AltTLSALPNPort:          port,
		TrustedRoots:            roots,
		DisableHTTPChallenge:    a.disableHTTP01,
		DisableTLSALPNChallenge: a.disableTLSALPN01,
		Logger:                  zl,
	})
	ac.magic.Issuers = []certmagic.Issuer{ac.issuer}
	e.acme = ac

	e.tlsConfig.NextProtos = append(e.tlsConfig.NextProtos, acmez.ACMETLS1Protocol)
	e.tlsConfig.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := ac.magic.GetCertificate(hello)
		if err != nil {
			e.logNoCertificate(hello, err)
		}
		return cert, err
	}

	e.logger.LogAttrs(ctx, slog.LevelInfo, "edge TLS: ACME manages the certificates",
		slog.Any("domains", a.Domains), slog.String("directory", directory), slog.String("storage", a.StorageDir))
	e.wg.Go(func() {
		// certmagic must find the plain port taken by the edge's listener when it solves a challenge, or it
		// would open one of its own there and the gateway's own listen would fail.
		if !waitListening(ctx, e.logger, e.cfg.HTTPAddr) {
			return
		}
		if err := ac.magic.ManageAsync(ctx, a.Domains); err != nil {
			e.logger.LogAttrs(ctx, slog.LevelError, "edge TLS: managing the ACME certificates", slog.String("error", err.Error()))
		}
	})
	return nil
}

// leaves are the certificates in the cache for the managed names.
func (ac *acmeCerts) leaves() []*x509.Certificate {
	var out []*x509.Certificate
	for _, d := range ac.domains {
		for _, c := range ac.cache.AllMatchingCertificates(d) {
			if c.Leaf != nil {
				out = append(out, c.Leaf)
			}
		}
	}
	return out
}

// logNoCertificate says why a handshake failed, at most once a minute: before the first certificate every
// client's handshake fails the same way.
func (e *Edge) logNoCertificate(hello *tls.ClientHelloInfo, err error) {
	now := time.Now().UnixNano()
	last := e.acme.lastHandshakeLog.Load()
	if now-last < int64(time.Minute) || !e.acme.lastHandshakeLog.CompareAndSwap(last, now) {
		return
	}
	msg := "edge TLS: a handshake found no certificate"
	if len(e.acme.leaves()) == 0 {
		msg += "; none is obtained yet (see the ACME log lines; the CA must reach this host on ports 80 or 443)"
	}
	e.logger.LogAttrs(context.Background(), slog.LevelWarn, msg,
		slog.String("server_name", hello.ServerName), slog.String("error", err.Error()))
}

// waitListening waits until something accepts TCP connections on addr (a listen address), or ctx ends.
func waitListening(ctx context.Context, logger *slog.Logger, addr string) bool {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	target := net.JoinHostPort(host, port)
	started := time.Now()
	warned := false
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "tcp", target); err == nil {
			_ = c.Close()
			return true
		}
		if !warned && time.Since(started) > 10*time.Second {
			warned = true
			logger.LogAttrs(ctx, slog.LevelWarn, "edge TLS: waiting for the plain-HTTP listener before obtaining certificates",
				slog.String("addr", addr))
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// owns reports whether host (a request's Host, a port and a final dot
// allowed) is one of the domains certificates are obtained for.
func (ac *acmeCerts) owns(host string) bool { return slices.Contains(ac.domains, hostOf(host)) }
