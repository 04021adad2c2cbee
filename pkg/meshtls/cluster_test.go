package meshtls

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/meshca"
)

// TestAcrossHostsWithOneCASeed: what a cluster relies on to call a service
// on another host. Two mesh controllers that opened copies of one CA seed
// issue leaves that trust each other, so anchoring on one host calls the
// engine of another; the URL names that host by IP address, which no leaf
// holds (they name services, spiffe://lucid/service/<name>), and the call
// still goes through: peers are verified by SPIFFE ID, never by host
// name. A controller with a CA of its own is refused.
func TestAcrossHostsWithOneCASeed(t *testing.T) {
	ctx := context.Background()
	seed := t.TempDir()
	if _, err := meshca.Open(ctx, seed, meshca.Options{}); err != nil {
		t.Fatal(err)
	}
	adopt := func() *meshca.CA {
		dir := t.TempDir()
		for _, n := range []string{"ca.json", "bundle.pem"} {
			data, err := os.ReadFile(filepath.Join(seed, n))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, n), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		ca, err := meshca.Open(ctx, dir, meshca.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	hostA, hostB := adopt(), adopt()
	url := serve(t, identity(t, hostB, "engine", Options{})) // http://127.0.0.1:port
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("the engine is at %s, want an IP address", url)
	}
	got, err := get(client(identity(t, hostA, "anchoring", Options{})), url+"/")
	if err != nil || got != "anchoring" {
		t.Fatalf("anchoring of host A calling the engine of host B: %q %v", got, err)
	}
	other := openCA(t, meshca.Options{})
	if _, err := get(client(identity(t, other, "anchoring", Options{})), url+"/"); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("a caller of another CA: %v, want refused", err)
	}
}
