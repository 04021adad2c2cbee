package meshtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshca"
)

func openCA(t testing.TB, opts meshca.Options) *meshca.CA {
	t.Helper()
	ca, err := meshca.Open(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func identity(t testing.TB, ca *meshca.CA, service string, opts Options) *Identity {
	t.Helper()
	id, err := Obtain(context.Background(), service, Local(ca), opts)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve runs an HTTP server over mTLS as id; the handler answers with the
// caller's service name.
func serve(t testing.TB, id *Identity) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, ln, id)
}

// serveOn is serve on ln.
func serveOn(t testing.TB, ln net.Listener, id *Identity) string {
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			caller, _ := Caller(r)
			_, _ = io.WriteString(w, caller)
		}),
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	go func() {
		_ = srv.Serve(tls.NewListener(ln, id.ServerTLS(func(peer string) bool { return catalog.MayCall(peer, id.Service()) })))
	}()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String() // upgraded to https by the transport
}

func client(id *Identity) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: id.Transport(nil, func(peer string) bool { return catalog.MayCall(id.Service(), peer) })}
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestMutualTLS(t *testing.T) {
	ca := openCA(t, meshca.Options{})
	url := serve(t, identity(t, ca, "engine", Options{}))
	got, err := get(client(identity(t, ca, "anchoring", Options{})), url)
	if err != nil {
		t.Fatal(err)
	}
	if got != "anchoring" {
		t.Fatalf("server saw caller %q, want anchoring", got)
	}
}

// TestRefusals: each bad peer is refused in the handshake, and the
// refusal is logged with the peer's identity.
func TestRefusals(t *testing.T) {
	ca := openCA(t, meshca.Options{})
	var serverLog testenv.SyncBuffer
	engine := identity(t, ca, "engine", Options{Logger: slog.New(slog.NewTextHandler(&serverLog, nil))})
	url := serve(t, engine)

	past := time.Now().Add(-3 * time.Hour)
	pastCA := openCA(t, meshca.Options{LeafTTL: time.Hour, Now: func() time.Time { return past }})
	for name, tc := range map[string]struct {
		caller  *Identity
		logWant string
	}{
		"not on the allow list": {identity(t, ca, "datachain", Options{}), "spiffe://lucid/service/datachain"},
		"leaf from another CA":  {identity(t, openCA(t, meshca.Options{}), "anchoring", Options{}), "spiffe://lucid/service/anchoring"},
		"expired leaf": {
			// Issued three hours ago for one hour; Obtain checks it at
			// issuance time, so the identity holds it.
			identity(t, pastCA, "gateway", Options{Now: func() time.Time { return past }}),
			"spiffe://lucid/service/gateway",
		},
	} {
		t.Run(name, func(t *testing.T) {
			// A caller from another CA cannot verify the server either;
			// send its certificate anyway, to see the server refuse it.
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return tc.caller.cert.Load(), nil
				},
			}}}
			if got, err := get(c, strings.Replace(url, "http:", "https:", 1)); err == nil {
				t.Fatalf("request succeeded (caller %q)", got)
			}
			testenv.Eventually(t, 2*time.Second, "refusal logged with the peer's identity", func() bool {
				return strings.Contains(serverLog.String(), "refused caller") && strings.Contains(serverLog.String(), tc.logWant)
			})
		})
	}

	t.Run("client refuses a server it may not call", func(t *testing.T) {
		blocks := serve(t, identity(t, ca, "blocks", Options{}))
		if _, err := get(client(identity(t, ca, "datachain", Options{})), blocks); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("datachain → blocks: %v, want a refusal", err)
		}
	})
	t.Run("a client expecting one service refuses another", func(t *testing.T) {
		// The gateway may call both engine and anchoring; a connection
		// meant for anchoring must not accept engine's identity.
		gw := identity(t, ca, "gateway", Options{})
		c := &http.Client{Timeout: 5 * time.Second, Transport: gw.Transport(nil, func(p string) bool { return p == "anchoring" })}
		if _, err := get(c, url); err == nil || !strings.Contains(err.Error(), `"engine" is not allowed`) {
			t.Fatalf("gateway expecting anchoring, reaching engine: %v, want a refusal", err)
		}
	})
	t.Run("no certificate reaches the handler unauthenticated", func(t *testing.T) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		got, err := get(c, strings.Replace(url, "http:", "https:", 1))
		if err != nil || got != "" {
			t.Fatalf("got caller %q, %v; want no caller (the HTTP layer decides)", got, err)
		}
	})
}

// TestRenewalHotSwap: short-lived leaves are renewed inside the 60-90 %
// window and swapped in while requests flow; none fails. It runs on the
// fake clock of a synctest bubble over an in-memory network.
func TestRenewalHotSwap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			duration = 8 * time.Second
			interval = 20 * time.Millisecond // between rounds of requests
		)
		var mem testenv.MemNet
		ca := openCA(t, meshca.Options{LeafTTL: 3 * time.Second})
		var renewals atomic.Int64 // after the first leaf
		serverID := identity(t, ca, "engine", Options{OnRenew: func(time.Time) { renewals.Add(1) }})
		renewals.Store(0)
		ctx := t.Context()
		go serverID.Run(ctx)
		callerID := identity(t, ca, "gateway", Options{})
		go callerID.Run(ctx)
		ln, err := mem.Listen("engine:8084")
		if err != nil {
			t.Fatal(err)
		}
		url := serveOn(t, ln, serverID)
		allow := func(peer string) bool { return catalog.MayCall(callerID.Service(), peer) }
		keepAlive := &http.Client{Timeout: 5 * time.Second, Transport: callerID.Transport(&http.Transport{DialContext: mem.DialContext}, allow)}
		fresh := &http.Client{Timeout: 5 * time.Second, Transport: callerID.Transport(&http.Transport{DialContext: mem.DialContext, DisableKeepAlives: true}, allow)}
		// Idle connections would keep their readers blocked past the test.
		t.Cleanup(keepAlive.CloseIdleConnections)
		t.Cleanup(fresh.CloseIdleConnections)

		first := serverID.cert.Load().Leaf.SerialNumber
		var ok, failed int
		pace := time.NewTicker(interval)
		defer pace.Stop()
		for start := time.Now(); time.Since(start) < duration; {
			for _, c := range []*http.Client{keepAlive, fresh} {
				if got, err := get(c, url); err != nil || got != "gateway" {
					failed++
					t.Errorf("request failed: %q %v", got, err)
				} else {
					ok++
				}
			}
			<-pace.C // the fake clock moves on: leaves age, renewals fire
		}
		if serverID.cert.Load().Leaf.SerialNumber.Cmp(first) == 0 {
			t.Fatal("the server's leaf was never renewed")
		}
		if n := renewals.Load(); n < 2 {
			t.Fatalf("%d renewals in %s of 3 s leaves, want at least 2", n, duration)
		}
		t.Logf("%d requests, %d failed, %d renewals", ok+failed, failed, renewals.Load())
	})
}

// BenchmarkHop measures a request between two services on loopback with
// keep-alive, plain HTTP and mTLS: the difference is what the mesh adds.
func BenchmarkHop(b *testing.B) {
	ca := openCA(b, meshca.Options{})
	engine := identity(b, ca, "engine", Options{})
	caller := identity(b, ca, "anchoring", Options{})
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	plain := &http.Server{Handler: handler}
	go func() { _ = plain.Serve(plainLn) }()
	defer func() {
		if err := plain.Close(); err != nil {
			b.Errorf("close the plain server: %v", err)
		}
	}()
	mtlsURL := serve(b, engine)

	for _, tc := range []struct {
		name string
		url  string
		c    *http.Client
	}{
		{"plain", "http://" + plainLn.Addr().String(), &http.Client{}},
		{"mtls", mtlsURL, client(caller)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if _, err := get(tc.c, tc.url); err != nil { // warm the connection
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := get(tc.c, tc.url); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// TestVerifyServerTLS: a caller without a mesh identity reaches the service
// it names, verified by the bundle, and is known to it as nobody; another
// service, or a server from another CA, is refused in the handshake.
func TestVerifyServerTLS(t *testing.T) {
	ca := openCA(t, meshca.Options{})
	url := "https" + strings.TrimPrefix(serve(t, identity(t, ca, "engine", Options{})), "http")
	call := func(bundle []*x509.Certificate, service string) (string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: VerifyServerTLS(bundle, service)}}
		defer c.CloseIdleConnections()
		return get(c, url)
	}
	if got, err := call(ca.Bundle(), "engine"); err != nil || got != "" {
		t.Fatalf("the engine, verified: caller %q, %v", got, err)
	}
	if _, err := call(ca.Bundle(), "datachain"); err == nil || !strings.Contains(err.Error(), `not "datachain"`) {
		t.Errorf("a server that is not the service meant: %v", err)
	}
	if _, err := call(openCA(t, meshca.Options{}).Bundle(), "engine"); err == nil {
		t.Error("a server outside the bundle was accepted")
	}
}
