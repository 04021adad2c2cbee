package edgetls

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/envconfig"
)

func TestRead(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root.pem")
	rootPEM, _ := selfSigned(t, "root.example", 1, time.Hour)
	if err := os.WriteFile(root, rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	read := func(env map[string]string) (Config, error) {
		r := envconfig.New(envconfig.Map(env))
		c := Read(r, "/data")
		return c, r.Err()
	}

	c, err := read(nil)
	if err != nil || c.Enabled() || c.HTTPAddr != DefaultHTTPAddr || c.HTTPSPort != 443 || c.HSTSMaxAge != 365*24*time.Hour {
		t.Fatalf("defaults: %+v, %v", c, err)
	}

	c, err = read(map[string]string{EnvACMEDomains: " Pi.Example.net, api.example.net,pi.example.net ", EnvACMEEmail: "ops@example.net",
		EnvACMECARoot: root, EnvHTTPSPort: "8443", EnvHTTPAddr: "127.0.0.1:8079", EnvHSTSMaxAge: "0"})
	if err != nil {
		t.Fatal(err)
	}
	a := c.ACME
	if !c.Enabled() || a == nil || strings.Join(a.Domains, ",") != "pi.example.net,api.example.net" ||
		a.Directory != DefaultDirectory || a.StorageDir != "/data/acme" || a.Email != "ops@example.net" ||
		a.CARootFile != root || c.HTTPSPort != 8443 || c.HTTPAddr != "127.0.0.1:8079" || c.HSTSMaxAge != 0 {
		t.Fatalf("ACME config: %+v %+v", c, a)
	}

	c, err = read(map[string]string{EnvCertFile: "/c.pem", EnvKeyFile: "/k.pem", EnvHSTSMaxAge: "600"})
	if err != nil || !c.Enabled() || c.ACME != nil || c.CertFile != "/c.pem" || c.HSTSMaxAge != 10*time.Minute {
		t.Fatalf("files config: %+v, %v", c, err)
	}

	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{EnvCertFile: "/c.pem", EnvKeyFile: "/k.pem", EnvACMEDomains: "pi.example.net"},
			[]string{EnvACMEDomains + ": and " + EnvCertFile + " are both set"}},
		{map[string]string{EnvCertFile: "/c.pem"}, []string{EnvCertFile + ": and " + EnvKeyFile + " must be set together"}},
		{map[string]string{EnvACMEDomains: "*.example.net,10.0.0.1,a..b,,ok.example.net,bad_name.net"},
			[]string{"wildcard", "IP address", `"a..b": not a DNS name`, "empty name", `"bad_name.net"`}},
		{map[string]string{EnvACMEEmail: "ops@example.net"}, []string{EnvACMEEmail + ": is set but " + EnvACMEDomains + " is not"}},
		{map[string]string{EnvACMEDomains: "pi.example.net", EnvACMEDirectory: "http://ca.example/dir"}, []string{"must be an https URL"}},
		{map[string]string{EnvACMEDomains: "pi.example.net", EnvACMECARoot: "/nonexistent/root.pem"}, []string{EnvACMECARoot + ": open /nonexistent/root.pem"}},
		{map[string]string{EnvACMEDomains: "pi.example.net", EnvACMECARoot: os.Args[0]}, []string{"holds no PEM certificate"}},
		{map[string]string{EnvACMEDomains: "pi.example.net", EnvACMEEmail: "ops"}, []string{`"ops" is not an email address`}},
		{map[string]string{EnvHTTPSPort: "0"}, []string{EnvHTTPSPort}},
		{map[string]string{EnvHSTSMaxAge: "-1"}, []string{EnvHSTSMaxAge}},
		{map[string]string{EnvHTTPAddr: "8079"}, []string{EnvHTTPAddr}},
	} {
		_, err := read(tc.env)
		if err == nil {
			t.Errorf("%v: no error", tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not say %q", tc.env, err, w)
			}
		}
	}
}

func TestHSTS(t *testing.T) {
	certFile, keyFile := writeCert(t, t.TempDir(), "hsts.example", 1, time.Hour)
	for maxAge, want := range map[time.Duration]string{0: "", time.Hour: "max-age=3600", DefaultHSTSMaxAge: "max-age=31536000"} {
		e := start(t, Config{CertFile: certFile, KeyFile: keyFile, HSTSMaxAge: maxAge}, nil)
		if got := e.HSTS(); got != want {
			t.Errorf("HSTS with max age %s = %q, want %q", maxAge, got, want)
		}
	}
}

func TestPlainHandlerRedirects(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
	writeCertFor(t, certFile, keyFile, []string{"*.lan.example", "pi.example.net", "192.0.2.7", "::1"})
	for _, tc := range []struct {
		port         int
		method, host string
		target, want string
	}{
		{443, "GET", "pi.example.net", "/api/v1/blocks?from=3&to=4", "https://pi.example.net/api/v1/blocks?from=3&to=4"},
		{443, "GET", "PI.Example.NET:80", "/", "https://pi.example.net/"},
		{8443, "POST", "pi.example.net:8079", "/api/v1/anchors", "https://pi.example.net:8443/api/v1/anchors"},
		{8443, "GET", "[::1]:8079", "/a%20b?q=%2F", "https://[::1]:8443/a%20b?q=%2F"},
		{443, "HEAD", "[::1]", "/x", "https://[::1]/x"},
		{443, "GET", "192.0.2.7:8079", "/.well-known/acme-challenge/unknown", "https://192.0.2.7/.well-known/acme-challenge/unknown"},
		{443, "GET", "box.lan.example", "/", "https://box.lan.example/"},
		{443, "GET", "pi.example.net.:8079", "/", "https://pi.example.net/"},
		// A host the certificate does not hold goes to its first name, never
		// where the request says.
		{443, "GET", "evil.example", "/x?y=1", "https://pi.example.net/x?y=1"},
		{8443, "GET", "evil.example:8079", "/", "https://pi.example.net:8443/"},
		{443, "GET", "a.b.lan.example", "/", "https://pi.example.net/"},
		{443, "GET", "192.168.1.20:8079", "/", "https://pi.example.net/"},
		{443, "GET", "[2001:db8::1]", "/", "https://pi.example.net/"},
		{443, "GET", "", "/", "https://pi.example.net/"},
	} {
		e := start(t, Config{CertFile: certFile, KeyFile: keyFile, HTTPSPort: tc.port}, nil)
		req := httptest.NewRequest(tc.method, tc.target, nil)
		req.Host = tc.host
		w := httptest.NewRecorder()
		e.PlainHandler().ServeHTTP(w, req)
		if w.Code != http.StatusPermanentRedirect || w.Header().Get("Location") != tc.want {
			t.Errorf("%s %s%s (HTTPS port %d): %d %q, want 308 %q", tc.method, tc.host, tc.target, tc.port,
				w.Code, w.Header().Get("Location"), tc.want)
		}
	}

	// A certificate of addresses only: its first one. A wildcard alone names
	// no host to send a stranger to.
	for _, tc := range []struct {
		sans       []string
		host, want string
	}{
		{[]string{"192.0.2.9", "192.0.2.10"}, "evil.example", "https://192.0.2.9/"},
		{[]string{"192.0.2.9", "192.0.2.10"}, "192.0.2.10", "https://192.0.2.10/"},
		{[]string{"*.lan.example"}, "box.lan.example", "https://box.lan.example/"},
		{[]string{"*.lan.example"}, "evil.example", ""},
	} {
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
		writeCertFor(t, certFile, keyFile, tc.sans)
		e := start(t, Config{CertFile: certFile, KeyFile: keyFile}, nil)
		req := httptest.NewRequest("GET", "/", nil)
		req.Host = tc.host
		w := httptest.NewRecorder()
		e.PlainHandler().ServeHTTP(w, req)
		switch {
		case tc.want == "" && (w.Code != http.StatusMisdirectedRequest || w.Header().Get("Location") != ""):
			t.Errorf("%v, host %q: %d %q, want 421 and no redirect", tc.sans, tc.host, w.Code, w.Header().Get("Location"))
		case tc.want != "" && (w.Code != http.StatusPermanentRedirect || w.Header().Get("Location") != tc.want):
			t.Errorf("%v, host %q: %d %q, want 308 %q", tc.sans, tc.host, w.Code, w.Header().Get("Location"), tc.want)
		}
	}
}

// TestPlainHandlerRedirectsOnlyPaths: a request target that is not a path
// (an absolute form with an opaque part, which net/http accepts, or *) is
// refused rather than glued to the redirect's authority, where it would
// move its host; an absolute form with a path redirects as its path.
func TestPlainHandlerRedirectsOnlyPaths(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
	writeCertFor(t, certFile, keyFile, []string{"pi.example.net"})
	for _, port := range []int{443, 8443} {
		e := start(t, Config{CertFile: certFile, KeyFile: keyFile, HTTPSPort: port}, nil)
		for target, want := range map[string]string{
			"http:@evil.example/phish":        "",
			"http:evil.example":               "",
			"*":                               "",
			"http://pi.example.net/a%2Fb?q=1": "/a%2Fb?q=1",
			"http://evil.example/x":           "/x",
			"http://pi.example.net":           "/",
			"https://pi.example.net?x=1":      "/?x=1",
			"//evil.example/x":                "//evil.example/x",
		} {
			method := "GET"
			if target == "*" {
				method = "OPTIONS"
			}
			// The bytes as net/http's server reads them.
			req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: pi.example.net\r\n\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			w := httptest.NewRecorder()
			e.PlainHandler().ServeHTTP(w, req)
			loc := w.Header().Get("Location")
			if want == "" {
				if w.Code != http.StatusBadRequest || loc != "" {
					t.Errorf("HTTPS port %d, %s %s: %d %q, want 400 and no redirect", port, method, target, w.Code, loc)
				}
				continue
			}
			u, err := url.Parse(loc)
			if err != nil {
				t.Fatal(err)
			}
			if w.Code != http.StatusPermanentRedirect || u.Hostname() != "pi.example.net" || u.RequestURI() != want {
				t.Errorf("HTTPS port %d, %s %s: %d %q, want 308 to pi.example.net%s", port, method, target, w.Code, loc, want)
			}
		}
	}
}

func TestACMERedirectsOnlyToItsDomains(t *testing.T) {
	e := &Edge{acme: &acmeCerts{domains: []string{"pi.example.net", "pi2.example.net"}}}
	for host, want := range map[string]string{
		"pi.example.net": "pi.example.net", "pi2.example.net": "pi2.example.net", "pi2.example.net.": "pi2.example.net",
		"evil.example": "pi.example.net", "192.168.1.20": "pi.example.net", "": "pi.example.net",
	} {
		if got, ok := e.redirectHost(host); !ok || got != want {
			t.Errorf("redirectHost(%q) = %q, %v; want %q", host, got, ok, want)
		}
	}
}

func TestCertFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, "files.example", 100, time.Hour)
	reg := prometheus.NewRegistry()
	var logs testenv.SyncBuffer
	e := start(t, Config{CertFile: certFile, KeyFile: keyFile, HSTSMaxAge: time.Hour, fileCheckInterval: 10 * time.Millisecond},
		reg, &logs)
	addr := serve(t, e)

	roots := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(certFile)
	roots.AppendCertsFromPEM(pemBytes)
	leaf := handshake(t, addr, "files.example", roots)
	if leaf.SerialNumber.Int64() != 100 || !e.NotAfter().Equal(leaf.NotAfter) {
		t.Fatalf("serving serial %d until %s; NotAfter() = %s", leaf.SerialNumber, leaf.NotAfter, e.NotAfter())
	}
	checkMetrics(t, reg, "files.example", leaf.NotAfter, 0)

	// TLS 1.1 is refused; HTTP/1.1 is the protocol.
	if c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "files.example", RootCAs: roots, MaxVersion: tls.VersionTLS11}); err == nil {
		_ = c.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "files.example", RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("ALPN chose %q", p)
	}
	_ = c.Close()

	// A renewed certificate written over the files is served after the next check, without a restart.
	writeCertTo(t, certFile, keyFile, "files.example", 101, 2*time.Hour)
	testenv.Eventually(t, 5*time.Second, "the new certificate served", func() bool {
		return handshake(t, addr, "files.example", nil).SerialNumber.Int64() == 101
	})
	leaf = handshake(t, addr, "files.example", nil)
	checkMetrics(t, reg, "files.example", leaf.NotAfter, 1)

	// A broken file keeps the certificate in use, and the log says why.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the broken key reported", func() bool {
		return strings.Contains(logs.String(), "still serving the previous certificate")
	})
	if got := handshake(t, addr, "files.example", nil).SerialNumber.Int64(); got != 101 {
		t.Errorf("after a broken key, serving serial %d", got)
	}
	checkMetrics(t, reg, "files.example", leaf.NotAfter, 1)
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("the log shows key material")
	}
}

func TestCertFilesErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, "bad.example", 1, time.Hour)
	otherCert, _ := writeCert(t, t.TempDir(), "other.example", 2, time.Hour)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert, key string
		want      string
	}{
		{filepath.Join(dir, "missing.pem"), keyFile, EnvCertFile + ": open " + filepath.Join(dir, "missing.pem") + ": no such file"},
		{certFile, filepath.Join(dir, "missing.key"), EnvKeyFile + ": open "},
		{garbage, keyFile, "failed to find any PEM data in certificate input"},
		{certFile, garbage, "failed to find any PEM data in key input"},
		{otherCert, keyFile, "private key does not match public key"},
	} {
		_, err := Start(context.Background(), Config{CertFile: tc.cert, KeyFile: tc.key}, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%s, %s) = %v, want an error saying %q", tc.cert, tc.key, err, tc.want)
		}
	}
	_, err := Start(context.Background(), Config{CertFile: certFile, KeyFile: keyFile, ACME: &ACME{Domains: []string{"x.example"}}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "both set") {
		t.Errorf("files and ACME: %v", err)
	}
	if _, err := Start(context.Background(), Config{}, nil, nil); err == nil {
		t.Error("Start without TLS configured succeeded")
	}
}

// start starts an edge that the test closes; logs go to the optional buffer.
func start(t *testing.T, c Config, reg prometheus.Registerer, logs ...*testenv.SyncBuffer) *Edge {
	t.Helper()
	buf := &testenv.SyncBuffer{}
	if len(logs) > 0 {
		buf = logs[0]
	}
	// The edge's background work may log after the test has ended: into a buffer, never into t.
	logger := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge log:\n%s", buf.String())
		}
	})
	e, err := Start(context.Background(), c, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// serve serves a small app over the edge's TLS on a loopback port, with HSTS as the gateway sends it, and returns
// its address.
func serve(t *testing.T, e *Edge) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, e, ln)
}

func serveOn(t *testing.T, e *Edge, ln net.Listener) string {
	t.Helper()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if v := e.HSTS(); v != "" {
				w.Header().Set("Strict-Transport-Security", v)
			}
			_, _ = io.WriteString(w, "hello over "+r.Proto)
		}),
		ErrorLog:          nil,
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(tls.NewListener(ln, e.TLSConfig())) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// handshake connects to addr for name and returns the certificate served; with roots nil it does not verify.
func handshake(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: name, RootCAs: roots, InsecureSkipVerify: roots == nil})
	if err != nil {
		t.Fatalf("handshake with %s for %s: %v", addr, name, err)
	}
	defer func() { _ = c.Close() }()
	return c.ConnectionState().PeerCertificates[0]
}

// checkMetrics checks the expiry gauge of name and the renewals counter.
func checkMetrics(t *testing.T, reg *prometheus.Registry, name string, notAfter time.Time, renewals float64) {
	t.Helper()
	got, err := expiryGauge(reg, name)
	if err != nil || got != float64(notAfter.Unix()) {
		t.Errorf("expiry gauge of %s = %v (%v), want %d", name, got, err, notAfter.Unix())
	}
	if n, err := renewalsTotal(reg); err != nil || n != renewals {
		t.Errorf("renewals counter = %v (%v), want %v", n, err, renewals)
	}
}

func expiryGauge(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "lucid_gateway_tls_certificate_expiry_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == name {
				return m.GetGauge().GetValue(), nil
			}
		}
	}
	return 0, errors.New("no series for " + name)
}

func renewalsTotal(reg *prometheus.Registry) (float64, error) {
	n, err := testutil.GatherAndCount(reg, "lucid_gateway_tls_certificate_renewals_total")
	if err != nil || n != 1 {
		return 0, errors.New("no renewals counter")
	}
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == "lucid_gateway_tls_certificate_renewals_total" {
			return mf.GetMetric()[0].GetCounter().GetValue(), nil
		}
	}
	return 0, errors.New("no renewals counter")
}

// writeCert writes a self-signed certificate for name into dir and returns the two files.
func writeCert(t *testing.T, dir, name string, serial int64, life time.Duration) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeCertTo(t, certFile, keyFile, name, serial, life)
	return certFile, keyFile
}

func writeCertTo(t *testing.T, certFile, keyFile, name string, serial int64, life time.Duration) {
	t.Helper()
	certPEM, keyPEM := selfSigned(t, name, serial, life)
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

func selfSigned(t *testing.T, name string, serial int64, life time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	return selfSignedFor(t, []string{name}, serial, life)
}

// writeCertFor writes a self-signed certificate for sans (DNS names, and IP addresses as such), valid for an hour.
func writeCertFor(t *testing.T, certFile, keyFile string, sans []string) {
	t.Helper()
	certPEM, keyPEM := selfSignedFor(t, sans, 1, time.Hour)
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func selfSignedFor(t *testing.T, sans []string, serial int64, life time.Duration) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: sans[0]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(life),
		IsCA:                  true, // its own root, for the test's client
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, san := range sans {
		if ip := net.ParseIP(san); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, san)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// TestPlainPortAnswersChallengesOnlyForItsDomains: a request on the plain
// port for any other name is redirected without certmagic's look-up, which
// for a name too long for a file logged the request's URI, Host and
// User-Agent whole, kilobytes for each request, to anyone.
func TestPlainPortAnswersChallengesOnlyForItsDomains(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a := &ACME{Domains: []string{"pi.example.net"}, Directory: "https://127.0.0.1:1/dir", StorageDir: t.TempDir()}
	e, err := Start(context.Background(), Config{ACME: a, HTTPAddr: "127.0.0.1:1", HTTPSPort: 443}, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	// As after a challenge was once solved: the tokens' directory exists.
	if err := os.MkdirAll(filepath.Join(a.StorageDir, "acme", certmagic.StorageKeys.Safe(e.acme.issuer.IssuerKey()), "challenge_tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 300)
	r := httptest.NewRequest(http.MethodGet, "/.well-known/acme-challenge/"+strings.Repeat("U", 3000), nil)
	r.Host = long
	r.Header.Set("User-Agent", strings.Repeat("X", 4000))
	w := httptest.NewRecorder()
	e.PlainHandler().ServeHTTP(w, r)
	if w.Code != http.StatusPermanentRedirect || !strings.HasPrefix(w.Header().Get("Location"), "https://pi.example.net/") {
		t.Errorf("a challenge for another name: %d %q, want a redirect to pi.example.net", w.Code, w.Header().Get("Location"))
	}
	if out := logs.String(); strings.Contains(out, long) || strings.Contains(out, "XXXXXXXX") {
		t.Errorf("the request reached the log: %.300s", out)
	}
	for host, want := range map[string]bool{"pi.example.net": true, "PI.example.net:80": true, "pi.example.net.": true, "[::1]:80": false, long: false} {
		if got := e.acme.owns(host); got != want {
			t.Errorf("owns(%.20q) = %v, want %v", host, got, want)
		}
	}
}
