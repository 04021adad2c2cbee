package testenv

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// GatewayTLS is a real `lucid gateway` process serving HTTPS with a
// certificate of a TestCA (LUCID_TLS_CERT_FILE), its upstreams all one
// server that answers {} to everything, for tests of clients of an HTTPS
// gateway.
type GatewayTLS struct {
	// URL is https://127.0.0.1:port.
	URL string
	// CAFile is the test CA's root, for a client's --cacert.
	CAFile string
	// Secret is its JWT_SECRET_KEY, and EnvFile an operator's env file
	// holding it, for a client's --env-file.
	Secret  string
	EnvFile string
}

// StartGatewayTLS builds lucid and runs its gateway with a certificate
// for 127.0.0.1 until the test ends.
func StartGatewayTLS(t testing.TB) *GatewayTLS {
	t.Helper()
	dir := t.TempDir()
	bin, err := BuildLucid(dir)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	t.Cleanup(up.Close)
	upstream := up.URL
	ca := NewTestCA(t)
	cert, key := ca.Issue(t, time.Now().Add(12*time.Hour), "pi.example.net", "127.0.0.1")
	g := &GatewayTLS{CAFile: filepath.Join(dir, "ca.pem"), Secret: "test-secret-of-the-gateway-0123456789abcdef", EnvFile: filepath.Join(dir, ".env.core")}
	for name, b := range map[string][]byte{"ca.pem": ca.RootPEM, "tls.crt": cert, "tls.key": key, ".env.core": []byte("JWT_SECRET_KEY=" + g.Secret + "\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := FreePort(t)
	g.URL = "https://127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "gateway")
	cmd.Env = append(os.Environ(),
		// Its plain port too: the default (:8079) is one for every
		// gateway two packages' tests start at once.
		"LUCID_ADDR=127.0.0.1:"+strconv.Itoa(port), "LUCID_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(FreePort(t)),
		"LUCID_DATA_DIR="+filepath.Join(dir, "data"),
		"JWT_SECRET_KEY="+g.Secret, "LUCID_SERVICE_KEY=test-service-key-0123456789abcdefghijklmnop",
		"LUCID_TLS_CERT_FILE="+filepath.Join(dir, "tls.crt"), "LUCID_TLS_KEY_FILE="+filepath.Join(dir, "tls.key"),
		"LUCID_ENGINE_URL="+upstream, "LUCID_ANCHORING_URL="+upstream, "LUCID_BLOCKS_URL="+upstream, "LUCID_DATACHAIN_URL="+upstream,
		"CONSUL_HOST=", "LUCID_MESH_URL=", "REDIS_URL=")
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gateway output:\n%s", out.String())
		}
	})
	probe := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // waiting for it to listen
	Eventually(t, 20*time.Second, "the gateway answering HTTPS", func() bool {
		resp, err := probe.Get(g.URL + "/health")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	return g
}
