package gateway

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
)

// TestGatewayGetsAndRenewsItsCertificate: a gateway with ACME settings
// obtains a certificate from a real ACME server (Pebble) over its own two
// listeners, serves HTTPS with HSTS to a client that trusts only Pebble's
// root, redirects plain HTTP, meters the certificate's expiry, and renews
// a short-lived certificate while clients keep calling, failing none.
func TestGatewayGetsAndRenewsItsCertificate(t *testing.T) {
	const domain = "gw.lucid.test"
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsPort := tlsLn.Addr().(*net.TCPAddr).Port
	plainPort := testenv.FreePort(t)
	pebble := testenv.StartPebble(t, testenv.PebbleOptions{HTTPPort: plainPort, TLSPort: tlsPort, Validity: 30 * time.Second})

	be := newBackend(t)
	g := startGatewayOn(t, tlsLn, be.URL, map[string]string{
		"LUCID_ACME_DOMAINS":   domain,
		"LUCID_ACME_DIRECTORY": pebble.DirectoryURL,
		"LUCID_ACME_CA_ROOT":   pebble.CARootFile,
		"LUCID_ACME_STORAGE":   t.TempDir(),
		"LUCID_HTTP_ADDR":      "127.0.0.1:" + strconv.Itoa(plainPort),
		"LUCID_HTTPS_PORT":     strconv.Itoa(tlsPort),
		"LUCID_RATE_FREE":      "1000000",
	}, nil, slog.DiscardHandler, func(a *App) {
		// Renew soon and look often: a 30-second certificate is renewed
		// within seconds of being issued, and again after that.
		a.tls.ACME.RenewalWindowRatio = 0.9
		a.tls.ACME.RenewCheckInterval = 250 * time.Millisecond
	})
	g.now, g.app.now = time.Now(), time.Now
	tok := g.token(t, "alice", auth.TierFree)

	// A client that trusts only Pebble's issuing root and reaches the
	// gateway under its name; serials records the certificates it saw.
	var serials sync.Map
	client := func(keepAlive bool) *http.Client {
		d := &net.Dialer{}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, tlsLn.Addr().String())
			},
			TLSClientConfig: &tls.Config{RootCAs: pebble.IssuingRoots(t), ServerName: domain, MinVersion: tls.VersionTLS12,
				VerifyConnection: func(cs tls.ConnectionState) error {
					serials.Store(cs.PeerCertificates[0].SerialNumber.String(), true)
					return nil
				}},
		}}
	}
	url := "https://" + domain + ":" + strconv.Itoa(tlsPort) + "/api/v1/anchors/x"
	get := func(c *http.Client) (*http.Response, string, error) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp, string(body), err
	}
	fresh := client(false)
	testenv.Eventually(t, 30*time.Second, "the first certificate is issued and served", func() bool {
		_, _, err := get(fresh)
		return err == nil
	})
	resp, body, err := get(fresh)
	if err != nil || resp.StatusCode != 200 || body != "upstream:/api/v1/anchors/x" {
		t.Fatalf("over HTTPS: %v %v %q", err, resp, body)
	}
	if hsts := resp.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(hsts, "max-age=") || resp.TLS.Version < tls.VersionTLS12 {
		t.Errorf("HSTS %q, TLS version %x", hsts, resp.TLS.Version)
	}
	if r := be.lastRequest(); r.Header.Get("X-Forwarded-Proto") != "https" {
		t.Errorf("upstream was told the scheme is %q", r.Header.Get("X-Forwarded-Proto"))
	}
	// A client that trusts the system's roots only is refused.
	if _, err := http.Get(url); err == nil {
		t.Error("a client without Pebble's root connected")
	}

	// Plain HTTP is redirected, path and query kept.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	preq, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(plainPort)+"/api/v1/anchors/x?a=1", nil)
	preq.Host = domain
	presp, err := noFollow.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if want := "https://" + domain + ":" + strconv.Itoa(tlsPort) + "/api/v1/anchors/x?a=1"; presp.StatusCode != http.StatusPermanentRedirect || presp.Header.Get("Location") != want {
		t.Errorf("plain HTTP: %d to %q, want 308 to %q", presp.StatusCode, presp.Header.Get("Location"), want)
	}
	// A Host the gateway has no certificate for is sent to its own name.
	preq.Host = "elsewhere.example"
	presp, err = noFollow.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	presp.Body.Close()
	if want := "https://" + domain + ":" + strconv.Itoa(tlsPort) + "/api/v1/anchors/x?a=1"; presp.StatusCode != http.StatusPermanentRedirect || presp.Header.Get("Location") != want {
		t.Errorf("plain HTTP for another host: %d to %q, want 308 to %q", presp.StatusCode, presp.Header.Get("Location"), want)
	}
	mreq, _ := http.NewRequest(http.MethodGet, "https://"+domain+":"+strconv.Itoa(tlsPort)+"/metrics", nil)
	mresp, err := fresh.Do(mreq)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), `lucid_gateway_tls_certificate_expiry_timestamp_seconds{name="`+domain+`"}`) {
		t.Errorf("/metrics lacks the certificate's expiry")
	}

	// Renewal under load: clients on kept-alive and on fresh connections
	// call until a certificate other than the ones seen so far is served.
	first := map[string]bool{}
	serials.Range(func(k, _ any) bool { first[k.(string)] = true; return true })
	var calls, failures atomic.Int64
	renewed := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(i%2 == 0)
			for {
				select {
				case <-renewed:
					return
				default:
				}
				resp, body, err := get(c)
				calls.Add(1)
				if err != nil || resp.StatusCode != 200 || body != "upstream:/api/v1/anchors/x" {
					failures.Add(1)
					t.Errorf("during renewal: %v %q", err, body)
				}
				serials.Range(func(k, _ any) bool {
					if !first[k.(string)] {
						once.Do(func() { close(renewed) })
					}
					return true
				})
			}
		}()
	}
	select {
	case <-renewed:
	case <-time.After(60 * time.Second):
		once.Do(func() { close(renewed) })
		t.Error("no renewed certificate was served within a minute")
	}
	wg.Wait()
	t.Logf("%d requests while the certificate was renewed, %d failed", calls.Load(), failures.Load())
}
