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
	"time"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshtls"
)

// TestRotationUnderLoad: one-minute leaves under continuous requests for
// three minutes, with a root rotation half way: every request succeeds,
// over kept-alive connections and fresh handshakes alike.
func TestRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("takes three minutes")
	}
	t.Parallel()
	const duration = 3 * time.Minute
	c := startController(t, map[string]string{"LUCID_MESH_LEAF_TTL": "1m"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var engineRenewals, gatewayRenewals atomic.Int64
	engine := c.identity(t, "engine", meshtls.Options{OnRenew: func(time.Time) { engineRenewals.Add(1) }})
	gateway := c.identity(t, "gateway", meshtls.Options{OnRenew: func(time.Time) { gatewayRenewals.Add(1) }})
	engineRenewals.Store(0)
	gatewayRenewals.Store(0)
	go engine.Run(ctx)
	go gateway.Run(ctx)
	url := serveAs(t, engine)

	allow := func(peer string) bool { return catalog.MayCall("gateway", peer) }
	keepAlive := &http.Client{Timeout: 5 * time.Second, Transport: gateway.Transport(nil, allow)}
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: gateway.Transport(&http.Transport{DisableKeepAlives: true}, allow)}
	get := func(hc *http.Client) error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &statusError{resp.Status}
		}
		return nil
	}

	start := time.Now()
	rotated := false
	var ok, failed int
	var newRoot string
	for time.Since(start) < duration {
		if !rotated && time.Since(start) > duration/2 {
			r, err := c.operator().Rotate(ctx)
			if err != nil {
				t.Fatalf("rotate: %v", err)
			}
			newRoot, rotated = r.Fingerprint, true
			t.Logf("root rotated at %s", time.Since(start).Round(time.Second))
		}
		for _, hc := range []*http.Client{keepAlive, fresh} {
			if err := get(hc); err != nil {
				failed++
				t.Errorf("request at %s failed: %v", time.Since(start).Round(time.Millisecond), err)
			} else {
				ok++
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Logf("%d requests, %d failed; renewals: engine %d, gateway %d", ok+failed, failed, engineRenewals.Load(), gatewayRenewals.Load())
	if engineRenewals.Load() < 3 || gatewayRenewals.Load() < 3 {
		t.Errorf("renewals engine %d, gateway %d in %s of 1-minute leaves; want at least 3 each", engineRenewals.Load(), gatewayRenewals.Load(), duration)
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
	bundle, err := meshtls.NewRemote(c.url, enrolment("engine")).Bundle(context.Background(), "engine")
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
