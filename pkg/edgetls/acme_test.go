package edgetls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/internal/testenv"
)

// acmeEdge is an edge under test with its two listeners and the Pebble that issues its certificates.
type acmeEdge struct {
	*Edge
	pebble             *testenv.Pebble
	reg                *prometheus.Registry
	logs               *testenv.SyncBuffer
	domain             string
	plainAddr, tlsAddr string
}

// startACMEEdge starts Pebble and an edge for domain whose listeners are the ports Pebble validates against.
// The plain listener is served at once unless holdPlain: the edge then waits for it before asking for a
// certificate, and serveHeldPlain opens it.
func startACMEEdge(t *testing.T, domain string, validity time.Duration, adjust func(*ACME), holdPlain bool) *acmeEdge {
	t.Helper()
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plainPort := testenv.FreePort(t)
	tlsPort := tlsLn.Addr().(*net.TCPAddr).Port
	p := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: plainPort, TLSPort: tlsPort, Validity: validity})

	a := &ACME{Domains: []string{domain}, Directory: p.DirectoryURL, CARootFile: p.CARootFile, StorageDir: storageDir(t)}
	if adjust != nil {
		adjust(a)
	}
	ae := &acmeEdge{pebble: p, reg: prometheus.NewRegistry(), logs: &testenv.SyncBuffer{}, domain: domain,
		plainAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(plainPort))}
	ae.Edge = start(t, Config{ACME: a, HTTPAddr: ae.plainAddr, HTTPSPort: 8443, HSTSMaxAge: time.Hour}, ae.reg, ae.logs)
	ae.tlsAddr = serveOn(t, ae.Edge, tlsLn)
	if !holdPlain {
		ae.servePlain(t)
	}
	return ae
}

// storageDir is the edge's ACME storage. Not t.TempDir: certmagic may still be releasing a lock file in it just
// after Close, which would fail t.TempDir's check that it removed everything.
func storageDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "edgetls-acme-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (ae *acmeEdge) servePlain(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", ae.plainAddr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: ae.PlainHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// client trusts only Pebble's issuing root and reaches the edge's TLS listener for the domain.
func (ae *acmeEdge) client(t *testing.T, keepAlive bool) *http.Client {
	t.Helper()
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ae.pebble.IssuingRoots(t), ServerName: ae.domain},
		DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, ae.tlsAddr)
		},
	}}
}

func (ae *acmeEdge) waitForCertificate(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, "a certificate obtained from Pebble", func() bool { return !ae.NotAfter().IsZero() })
}

func TestACMEIssues(t *testing.T) {
	for _, tc := range []struct {
		name      string
		challenge func(*ACME)
	}{
		{"http-01", func(a *ACME) { a.disableTLSALPN01 = true }},
		{"tls-alpn-01", func(a *ACME) { a.disableHTTP01 = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			domain := tc.name + ".issues.lucid.test"
			ae := startACMEEdge(t, domain, 0, tc.challenge, true)

			// Until the plain listener answers, nothing is asked of the CA, and a handshake finds no certificate.
			if c, err := tls.Dial("tcp", ae.tlsAddr, &tls.Config{ServerName: domain, InsecureSkipVerify: true}); err == nil {
				_ = c.Close()
				t.Fatal("a handshake before any certificate succeeded")
			}
			if !ae.NotAfter().IsZero() {
				t.Fatal("a certificate before the plain listener answered")
			}
			if !strings.Contains(ae.logs.String(), "a handshake found no certificate; none is obtained yet") {
				t.Error("the log does not say why the handshake failed")
			}
			ae.servePlain(t)
			ae.waitForCertificate(t)

			// A client that trusts only Pebble's root speaks HTTPS with the edge, and gets HSTS.
			resp, err := ae.client(t, true).Get("https://" + domain + "/hello")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != "hello over HTTP/1.1" ||
				resp.Header.Get("Strict-Transport-Security") != "max-age=3600" || resp.TLS.Version < tls.VersionTLS12 {
				t.Fatalf("GET: %d %q, HSTS %q, TLS %x", resp.StatusCode, body, resp.Header.Get("Strict-Transport-Security"), resp.TLS.Version)
			}
			leaf := resp.TLS.PeerCertificates[0]
			if leaf.DNSNames[0] != domain || !leaf.NotAfter.Equal(ae.NotAfter()) {
				t.Errorf("served %v until %s; NotAfter() = %s", leaf.DNSNames, leaf.NotAfter, ae.NotAfter())
			}
			checkMetrics(t, ae.reg, domain, leaf.NotAfter, 1)

			// The system roots do not know Pebble: the certificate is Pebble's, not a fallback.
			sys := &http.Client{Transport: &http.Transport{
				TLSClientConfig: &tls.Config{ServerName: domain},
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, ae.tlsAddr)
				},
			}}
			if _, err := sys.Get("https://" + domain + "/"); err == nil || !errors.As(err, new(x509.UnknownAuthorityError)) {
				t.Errorf("a client with the system roots: %v, want an unknown authority", err)
			}

			// The plain port redirects to HTTPS on the public port, path and query kept.
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			req, _ := http.NewRequest(http.MethodPost, "http://"+ae.plainAddr+"/api/v1/anchors?x=1", strings.NewReader("{}"))
			req.Host = domain
			resp, err = noFollow.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if want := "https://" + domain + ":8443/api/v1/anchors?x=1"; resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
				t.Errorf("plain POST: %d %q, want 308 %q", resp.StatusCode, resp.Header.Get("Location"), want)
			}

			// A restart finds the certificate in storage: nothing is obtained again.
			if err := ae.Close(); err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			again := start(t, Config{ACME: ae.cfg.ACME, HTTPAddr: ae.plainAddr}, reg)
			testenv.Eventually(t, 10*time.Second, "the stored certificate loaded", func() bool { return !again.NotAfter().IsZero() })
			if !again.NotAfter().Equal(leaf.NotAfter) {
				t.Errorf("after a restart NotAfter is %s, want the stored %s", again.NotAfter(), leaf.NotAfter)
			}
			checkMetrics(t, reg, domain, leaf.NotAfter, 0)
		})
	}
}

// TestACMERenewsUnderLoad has Pebble issue certificates that live 30 seconds, renewed with 90% of their lifetime
// left, while clients keep sending requests over new and kept-alive connections: not one request may fail.
func TestACMERenewsUnderLoad(t *testing.T) {
	domain := "renews.lucid.test"
	ae := startACMEEdge(t, domain, 30*time.Second, func(a *ACME) {
		a.RenewCheckInterval = 250 * time.Millisecond
		a.RenewalWindowRatio = 0.9
	}, false)
	ae.waitForCertificate(t)
	first := ae.NotAfter()
	firstGauge, err := expiryGauge(ae.reg, domain)
	if err != nil {
		t.Fatal(err)
	}

	var (
		requests, failures atomic.Int64
		mu                 sync.Mutex
		serials            = map[string]bool{}
		firstErr           error
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := range 8 {
		client := ae.client(t, i%2 == 0) // half reconnect for every request, so handshakes run during the renewal
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := client.Get("https://" + domain + "/load")
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				requests.Add(1)
				mu.Lock()
				if err != nil {
					failures.Add(1)
					if firstErr == nil {
						firstErr = err
					}
				} else {
					serials[resp.TLS.PeerCertificates[0].SerialNumber.String()] = true
				}
				mu.Unlock()
			}
		})
	}
	// Wait for the event: a request served with a renewed certificate.
	testenv.Eventually(t, 40*time.Second, "a renewed certificate served under load", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(serials) >= 2
	})
	cancel()
	wg.Wait()
	t.Logf("%d requests, %d certificates served", requests.Load(), len(serials))
	if failures.Load() > 0 {
		t.Fatalf("%d of %d requests failed during the renewal; the first: %v", failures.Load(), requests.Load(), firstErr)
	}
	if !ae.NotAfter().After(first) {
		t.Errorf("NotAfter %s did not move past %s", ae.NotAfter(), first)
	}
	if g, err := expiryGauge(ae.reg, domain); err != nil || g <= firstGauge {
		t.Errorf("expiry gauge %v (%v) did not move past %v", g, err, firstGauge)
	}
	if n, err := renewalsTotal(ae.reg); err != nil || n < 2 {
		t.Errorf("renewals counter %v (%v), want at least 2", n, err)
	}
}
