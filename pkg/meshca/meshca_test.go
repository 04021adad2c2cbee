package meshca

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func csrFor(t testing.TB, key any) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}, DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verify checks leaf against a peer that trusts roots, at now.
func verify(leaf Leaf, roots []*x509.Certificate, now time.Time) error {
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, c := range leaf.Chain[1:] {
		ip.AddCert(c)
	}
	_, err := leaf.Chain[0].Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

func TestCreateSignAndReload(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Sign(ctx, csrFor(t, p256(t)), "engine")
	if err != nil {
		t.Fatal(err)
	}
	c := leaf.Chain[0]
	if name, ok := ServiceOf(c); !ok || name != "engine" {
		t.Errorf("ServiceOf = %q, %v", name, ok)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://lucid/service/engine" {
		t.Errorf("URIs = %v", c.URIs)
	}
	if len(c.DNSNames) != 1 || c.DNSNames[0] != "engine" {
		t.Errorf("the CSR's names leaked into the leaf: %v", c.DNSNames)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < DefaultLeafTTL || life > DefaultLeafTTL+2*time.Minute {
		t.Errorf("leaf lifetime %s, want about %s", life, DefaultLeafTTL)
	}
	if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || c.IsCA {
		t.Errorf("leaf key %T, IsCA %v", c.PublicKey, c.IsCA)
	}
	if err := verify(leaf, ca.Bundle(), time.Now()); err != nil {
		t.Fatalf("leaf does not verify against the bundle: %v", err)
	}
	for _, name := range []string{stateFile, bundleFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 0600", name, fi.Mode().Perm())
		}
	}

	again, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Fingerprint() != ca.Fingerprint() {
		t.Fatal("reopening made a new root")
	}
	if err := verify(leaf, again.Bundle(), time.Now()); err != nil {
		t.Fatalf("an old leaf does not verify after reopening: %v", err)
	}
}

func TestSignRefuses(t *testing.T) {
	ctx := context.Background()
	ca, err := Open(ctx, t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	tampered := csrFor(t, p256(t))
	tampered.Signature[len(tampered.Signature)-1] ^= 1
	for name, tc := range map[string]struct {
		csr     *x509.CertificateRequest
		service string
		want    string
	}{
		"ed25519 key":    {csrFor(t, edKey), "engine", "P-256"},
		"P-384 key":      {csrFor(t, p384), "engine", "P-256"},
		"bad signature":  {tampered, "engine", "signature"},
		"bad name":       {csrFor(t, p256(t)), "Engine/../x", "service name"},
		"empty name":     {csrFor(t, p256(t)), "", "service name"},
		"too long name":  {csrFor(t, p256(t)), strings.Repeat("a", 64), "service name"},
		"trailing dash":  {csrFor(t, p256(t)), "engine-", "service name"},
		"uppercase name": {csrFor(t, p256(t)), "ENGINE", "service name"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ca.Sign(ctx, tc.csr, tc.service)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Sign = %v, want an error about %q", err, tc.want)
			}
		})
	}
}

// TestRotation: after a rotation, a peer holding only the old root accepts
// new leaves (through the cross certificate), a peer holding the new
// bundle accepts old leaves until they expire, and the old root leaves the
// bundle once the overlap is over.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	clk := &clock{time.Now()}
	dir := t.TempDir()
	ca, err := Open(ctx, dir, Options{LeafTTL: time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	oldBundle := ca.Bundle()
	oldLeaf, err := ca.Sign(ctx, csrFor(t, p256(t)), "gateway")
	if err != nil {
		t.Fatal(err)
	}
	oldFP := ca.Fingerprint()

	clk.t = clk.t.Add(10 * time.Minute)
	if err := ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if ca.Fingerprint() == oldFP {
		t.Fatal("rotation kept the root")
	}
	newBundle := ca.Bundle()
	if len(newBundle) != 2 {
		t.Fatalf("bundle during the overlap has %d roots, want 2", len(newBundle))
	}
	newLeaf, err := ca.Sign(ctx, csrFor(t, p256(t)), "engine")
	if err != nil {
		t.Fatal(err)
	}
	if len(newLeaf.Chain) != 3 {
		t.Fatalf("a leaf issued during the overlap has %d certificates, want leaf, intermediate, cross", len(newLeaf.Chain))
	}
	for name, tc := range map[string]struct {
		leaf  Leaf
		roots []*x509.Certificate
	}{
		"new leaf, old bundle": {newLeaf, oldBundle},
		"new leaf, new bundle": {newLeaf, newBundle},
		"old leaf, new bundle": {oldLeaf, newBundle},
		"new leaf, new root":   {Leaf{Chain: newLeaf.Chain[:2]}, newBundle[1:]},
	} {
		if err := verify(tc.leaf, tc.roots, clk.t); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	var busy *RotationInProgressError
	if err := ca.Rotate(ctx); !errors.As(err, &busy) {
		t.Fatalf("a second rotation inside the overlap: %v, want RotationInProgressError", err)
	}

	// The rotation survives a restart.
	reopened, err := Open(ctx, dir, Options{LeafTTL: time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if reopened.Fingerprint() != ca.Fingerprint() || len(reopened.Bundle()) != 2 {
		t.Fatal("the rotation was not kept on disk")
	}

	// After the overlap the old root is gone, leaves no longer carry the
	// cross certificate, and the next rotation may start.
	clk.t = clk.t.Add(time.Hour + 2*time.Minute)
	if n := len(ca.Bundle()); n != 1 {
		t.Fatalf("bundle after the overlap has %d roots, want 1", n)
	}
	late, err := ca.Sign(ctx, csrFor(t, p256(t)), "engine")
	if err != nil {
		t.Fatal(err)
	}
	if len(late.Chain) != 2 {
		t.Fatalf("a leaf issued after the overlap has %d certificates, want 2", len(late.Chain))
	}
	if err := verify(late, ca.Bundle(), clk.t); err != nil {
		t.Fatal(err)
	}
	if err := ca.Rotate(ctx); err != nil {
		t.Fatalf("rotation after the overlap: %v", err)
	}
}

func TestCorruptStateIsAClearError(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Open(ctx, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, stateFile)
	data, _ := os.ReadFile(path)
	broken := strings.Replace(string(data), `"root_cert": "-----BEGIN CERTIFICATE-----\nMII`, `"root_cert": "-----BEGIN CERTIFICATE-----\nXXX`, 1)
	if broken == string(data) {
		t.Fatal("test did not corrupt the state")
	}
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "root_cert") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Open on a corrupt state = %v, want an error naming the directory and root_cert", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatal("the error shows key material")
	}
}

// BenchmarkSign is leaf issuance: CSR check and one ECDSA signature.
func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	ca, err := Open(ctx, b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	csr := csrFor(b, p256(b))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Sign(ctx, csr, "engine"); err != nil {
			b.Fatal(err)
		}
	}
}
