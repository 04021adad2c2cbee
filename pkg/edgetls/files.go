package edgetls

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// fileCert is an operator's certificate and key, re-read when the files change, so a renewed certificate needs
// no restart.
type fileCert struct {
	certFile, keyFile string
	mu                sync.Mutex // one reload at a time
	cur               atomic.Pointer[loadedCert]
}

type loadedCert struct {
	cert *tls.Certificate
	// sum is the hash of both files as read, so a check that finds them unchanged parses nothing.
	sum [sha256.Size]byte
}

func (f *fileCert) current() *tls.Certificate {
	if l := f.cur.Load(); l != nil {
		return l.cert
	}
	return nil
}

// reload reads both files and serves what they hold when it differs from the certificate in use. It reports
// whether the certificate changed. On an error the certificate in use stays: an operator writing the two files
// one after the other is seen half-way through at worst, and the next check finds both.
func (f *fileCert) reload() (changed bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return false, fmt.Errorf("%s: %w", EnvCertFile, err)
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return false, fmt.Errorf("%s: %w", EnvKeyFile, err)
	}
	sum := sha256.Sum256(bytes.Join([][]byte{certPEM, keyPEM}, []byte{0}))
	if old := f.cur.Load(); old != nil && old.sum == sum {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("%s (%s) and %s (%s): %w", EnvCertFile, f.certFile, EnvKeyFile, f.keyFile, err)
	}
	f.cur.Store(&loadedCert{cert: &cert, sum: sum})
	return true, nil
}

// startFiles loads the operator's certificate, failing when it cannot be served, and checks the files for a
// change until ctx ends.
func (e *Edge) startFiles(ctx context.Context) error {
	f := &fileCert{certFile: e.cfg.CertFile, keyFile: e.cfg.KeyFile}
	if _, err := f.reload(); err != nil {
		return err
	}
	e.files = f
	e.tlsConfig.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.current(), nil }
	e.logServing(ctx, "edge TLS: serving the certificate files")

	interval := e.cfg.fileCheckInterval
	if interval <= 0 {
		interval = fileCheckInterval
	}
	e.wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				e.checkFiles(ctx)
			}
		}
	})
	return nil
}

// checkFiles re-reads the certificate files and counts a change.
func (e *Edge) checkFiles(ctx context.Context) {
	changed, err := e.files.reload()
	if err != nil {
		e.logger.LogAttrs(ctx, slog.LevelError, "edge TLS: certificate files unreadable; still serving the previous certificate",
			slog.String("error", err.Error()))
		return
	}
	if changed {
		e.renewals.Inc()
		e.logServing(ctx, "edge TLS: certificate files changed; serving the new certificate")
	}
}

func (e *Edge) logServing(ctx context.Context, msg string) {
	leaf := e.files.current().Leaf
	level := slog.LevelInfo
	if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		msg += " (it is not valid now: clients will refuse it)"
		level = slog.LevelWarn
	}
	e.logger.LogAttrs(ctx, level, msg, slog.String("name", certName(leaf)),
		slog.Time("not_after", leaf.NotAfter), slog.String("cert_file", e.cfg.CertFile))
}
