package mesh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshtls"
)

// TestRotationUnderLoad: one-minute leaves under continuous requests for
// three minutes, with a root rotation half way: every request succeeds,
// over kept-alive connections and fresh handshakes alike. It runs on the
// fake clock of a synctest bubble over an in-memory network, so the leaves
// really expire and are renewed, and the three minutes take seconds.
func TestRotationUnderLoad(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const (
			duration = 3 * time.Minute
			interval = 100 * time.Millisecond // between rounds of requests
		)
		var mem testenv.MemNet
		c := startControllerOn(t, &mem, map[string]string{"LUCID_MESH_LEAF_TTL": "1m"})
		ctx := t.Context()

		var engineRenewals, gatewayRenewals atomic.Int64
		engine := c.identity(t, "engine", meshtls.Options{OnRenew: func(time.Time) { engineRenewals.Add(1) }})
		gateway := c.identity(t, "gateway", meshtls.Options{OnRenew: func(time.Time) { gatewayRenewals.Add(1) }})
		engineRenewals.Store(0)
		gatewayRenewals.Store(0)
		go engine.Run(ctx)
		go gateway.Run(ctx)
		ln, err := mem.Listen("127.0.0.1:8084")
		if err != nil {
			t.Fatal(err)
		}
		url := serveOn(t, ln, engine)
		firstLeaf := engine.NotAfter()

		allow := func(peer string) bool { return catalog.MayCall("gateway", peer) }
		keepAliveTransport := gateway.Transport(&http.Transport{DialContext: mem.DialContext}, allow)
		freshTransport := gateway.Transport(&http.Transport{DialContext: mem.DialContext, DisableKeepAlives: true}, allow)
		keepAlive := &http.Client{Timeout: 5 * time.Second, Transport: keepAliveTransport}
		fresh := &http.Client{Timeout: 5 * time.Second, Transport: freshTransport}
		// Idle connections would keep their readers blocked past the test.
		t.Cleanup(keepAlive.CloseIdleConnections)
		t.Cleanup(fresh.CloseIdleConnections)
		operator := meshapi.New(c.url, testOperator, &http.Client{Timeout: 10 * time.Second,
			Transport: &http.Transport{DialContext: mem.DialContext, TLSClientConfig: insecureTLS(), DisableKeepAlives: true}})

		start := time.Now()
		rotated := false
		var ok, failed int
		var newRoot string
		pace := time.NewTicker(interval)
		defer pace.Stop()
		for time.Since(start) < duration {
			if !rotated && time.Since(start) > duration/2 {
				r, err := operator.Rotate(ctx)
				if err != nil {
					t.Fatalf("rotate: %v", err)
				}
				newRoot, rotated = r.Fingerprint, true
				t.Logf("root rotated at %s", time.Since(start).Round(time.Second))
			}
			for _, hc := range []*http.Client{keepAlive, fresh} {
				if err := get(hc, url); err != nil {
					failed++
					t.Errorf("request at %s failed: %v", time.Since(start).Round(time.Millisecond), err)
				} else {
					ok++
				}
			}
			<-pace.C // the fake clock moves on: leaves age, renewals fire
		}
		t.Logf("%d requests, %d failed; renewals: engine %d, gateway %d", ok+failed, failed, engineRenewals.Load(), gatewayRenewals.Load())
		if engineRenewals.Load() < 3 || gatewayRenewals.Load() < 3 {
			t.Errorf("renewals engine %d, gateway %d in %s of 1-minute leaves; want at least 3 each", engineRenewals.Load(), gatewayRenewals.Load(), duration)
		}
		// The requests outlived the first leaf: it expired while they ran.
		if now := time.Now(); !now.After(firstLeaf) {
			t.Errorf("the test ended at %s, before the first leaf expired at %s", now, firstLeaf)
		}
		// The leaves in use now come from the new root: their chain ends with
		// the cross certificate, which carries the new root's key.
		chain := engine.Certificate().Certificate
		if len(chain) != 3 {
			t.Fatalf("engine's chain has %d certificates after the rotation, want leaf, intermediate, cross", len(chain))
		}
		if got := crossFingerprint(t, c, chain[2]); got != newRoot {
			t.Errorf("engine's leaf chains to %s, want the new root %s", got, newRoot)
		}
	})
}

// get asks url through hc and wants a 200.
func get(hc *http.Client, url string) error {
	resp, err := hc.Get(url)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &statusError{resp.Status}
	}
	return nil
}

type statusError struct{ status string }

func (e *statusError) Error() string { return e.status }

// crossFingerprint finds the root in the controller's bundle that has the
// cross certificate's key, and returns its fingerprint.
func crossFingerprint(t *testing.T, c *controller, crossDER []byte) string {
	t.Helper()
	cross, err := x509.ParseCertificate(crossDER)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := c.remote("engine").Bundle(context.Background(), "engine")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range bundle {
		if bytes.Equal(r.RawSubjectPublicKeyInfo, cross.RawSubjectPublicKeyInfo) {
			sum := sha256.Sum256(r.Raw)
			return hex.EncodeToString(sum[:])
		}
	}
	return "none"
}
