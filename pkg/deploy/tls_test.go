package deploy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// TestDeployShipsTheGatewayCertificate: with lucid.yaml's tls files, each
// release carries the certificate and key, owned by the services' user
// with mode 0600, in the gateway's container only; the gateway answers
// HTTPS with that certificate on the published HTTPS port; a rollback
// brings the previous certificate back with its release; no key material
// reaches an event.
func TestDeployShipsTheGatewayCertificate(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ca := testenv.NewTestCA(t)
	certA, keyA := ca.Issue(t, time.Now().Add(20*time.Hour), "pi.example.net", "127.0.0.1")
	certB, keyB := ca.Issue(t, time.Now().Add(22*time.Hour), "pi.example.net", "127.0.0.1")
	const httpsPort, httpPort = 443, 80
	render := func(cert, key []byte) {
		t.Helper()
		files, err := deployfiles.Render(ctx, deployfiles.Options{ImageName: imageName, ImageTag: imageTag, NoConsul: true, PortOffset: portOffset, Routes: f.routes,
			TLS: &deployfiles.TLS{Cert: cert, Key: key, HTTPSPort: httpsPort, HTTPPort: httpPort},
			// The same secrets for both renders, as an operator's env file keeps them.
			NewSecret: func(n int) string { return strings.Repeat("s", n) }, NewUUID: func() string { return "55555555-5555-4555-9555-555555555555" }})
		if err != nil {
			t.Fatal(err)
		}
		f.compose, f.envs = files.Compose, files.ServiceEnvs
	}
	good := images(t, lucidBinary(t), "v1")
	seed := map[string][]byte{deployfiles.MeshCAStateName: []byte(`{"seed":"not read here"}`), deployfiles.MeshCABundleName: []byte("bundle")}
	deployWith := func(cert, key []byte) string {
		t.Helper()
		render(cert, key)
		var events []Event
		o := f.options(f.dial(t), good, &events)
		o.cfg.GatewayHostPort = 0 // found from the gateway's container: the HTTPS port
		o.b.TLS = map[string][]byte{deployfiles.TLSCertName: cert, deployfiles.TLSKeyName: key}
		// A cluster's mesh CA seed is placed the same way, for the mesh
		// controller (this compose file mounts none: only its placement is
		// checked here).
		o.b.MeshCASeed = seed
		if _, err := runDeploy(ctx, t, o); err != nil {
			t.Fatalf("deploy: %v", err)
		}
		for _, e := range events {
			if strings.Contains(e.Message, "PRIVATE KEY") || strings.Contains(e.Message, string(key[40:80])) {
				t.Fatalf("event %s/%s carries key material", e.Step, e.Status)
			}
		}
		return f.current(t)
	}
	served := func() []byte {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca.RootPEM)
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(fmt.Sprintf("https://127.0.0.1:%d/health", httpsPort+portOffset))
		if err != nil {
			t.Fatalf("HTTPS to the gateway, trusting only the test CA: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("gateway /health over HTTPS: %s", resp.Status)
		}
		return resp.TLS.PeerCertificates[0].Raw
	}

	first := deployWith(certA, keyA)
	if !bytes.Equal(served(), leafOf(certA)) {
		t.Fatal("the gateway does not serve the first release's certificate")
	}
	// On the host: the deploy user's directories, the services' files.
	for _, p := range []string{
		path.Join(deployfiles.TLSDir, deployfiles.TLSCertName), path.Join(deployfiles.TLSDir, deployfiles.TLSKeyName),
		path.Join(deployfiles.MeshCASeedDir, deployfiles.MeshCAStateName), path.Join(deployfiles.MeshCASeedDir, deployfiles.MeshCABundleName),
	} {
		n := filepath.Join(f.dir, "releases", first, filepath.FromSlash(p))
		fi, err := os.Stat(n)
		if err != nil {
			t.Fatal(err)
		}
		if data, err := os.ReadFile(n); err == nil && !bytes.Equal(data, seed[path.Base(p)]) && strings.HasPrefix(p, deployfiles.MeshCASeedDir) {
			t.Errorf("%s on the host holds %q", p, data)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 65532 || st.Gid != 65532 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s on the host: %d:%d %v, want 65532:65532 0600", n, st.Uid, st.Gid, fi.Mode().Perm())
		}
	}
	// In the gateway's container, as its user sees them; and in no other.
	gw, _ := catalog.Lookup(catalog.GatewayService)
	hdr, content := copyFrom(t, gw.Container, deployfiles.TLSMount+"/"+deployfiles.TLSKeyName)
	if hdr.Uid != 65532 || hdr.Gid != 65532 || hdr.FileInfo().Mode().Perm() != 0o600 || !bytes.Equal(content, keyA) {
		t.Errorf("the key in the gateway's container: %d:%d %v", hdr.Uid, hdr.Gid, hdr.FileInfo().Mode().Perm())
	}
	for _, s := range catalog.Services {
		if s.Name == catalog.GatewayService {
			continue
		}
		if out, err := exec.Command("docker", "cp", s.Container+":"+deployfiles.TLSMount, "-").CombinedOutput(); err == nil {
			t.Errorf("%s's container has %s (%d bytes)", s.Name, deployfiles.TLSMount, len(out))
		}
	}

	deployWith(certB, keyB)
	if !bytes.Equal(served(), leafOf(certB)) {
		t.Fatal("the gateway does not serve the second release's certificate")
	}
	var events []Event
	rcfg := f.options(f.dial(t), nil, &events).cfg
	rcfg.GatewayHostPort = 0
	rd, err := New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if res, err := rd.Rollback(ctx, "", nil); err != nil || res.Release != first {
		t.Fatalf("rollback: %+v %v", res, err)
	}
	if !bytes.Equal(served(), leafOf(certA)) {
		t.Fatal("after the rollback the gateway does not serve the first release's certificate again")
	}
}

// copyFrom reads one file out of a container, with its tar header (owner
// and mode as the container sees them).
func copyFrom(t *testing.T, ctr, p string) (*tar.Header, []byte) {
	t.Helper()
	out, err := exec.Command("docker", "cp", ctr+":"+p, "-").Output()
	if err != nil {
		t.Fatalf("docker cp %s:%s: %v", ctr, p, err)
	}
	tr := tar.NewReader(bytes.NewReader(out))
	hdr, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := b.ReadFrom(tr); err != nil {
		t.Fatal(err)
	}
	return hdr, b.Bytes()
}
