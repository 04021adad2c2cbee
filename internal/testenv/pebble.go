package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// PebbleOptions say where a test's ACME server sends its challenges and how long its certificates live.
type PebbleOptions struct {
	// HTTPPort and TLSPort are the ports on 127.0.0.1 where Pebble's validation authority sends HTTP-01 and
	// TLS-ALPN-01 challenges: the plain and TLS listeners of the server under test. Every name resolves to
	// 127.0.0.1.
	HTTPPort, TLSPort int
	// Validity is the lifetime of the certificates Pebble issues (whole seconds); zero is Pebble's default,
	// 90 days.
	Validity time.Duration
}

// Pebble is Let's Encrypt's Pebble ACME server, with its challenge test server as the DNS that answers
// 127.0.0.1 for every name, run for one test on free loopback ports.
type Pebble struct {
	// DirectoryURL is the ACME directory, https://127.0.0.1:<port>/dir.
	DirectoryURL string
	// CARootPEM is the root of the directory's own HTTPS (a key made for this test), and CARootFile the same in
	// a file: what LUCID_ACME_CA_ROOT names.
	CARootPEM  []byte
	CARootFile string

	mgmt   string       // Pebble's management address
	client *http.Client // trusts CARootPEM only
}

// StartPebble runs pebble-challtestsrv and pebble for the test, stopped when it ends. The binaries are found in
// LUCID_PEBBLE_DIR (scripts/build-pebble.sh prints it), else on PATH; without them the test is skipped, or fails
// when CI=true. Validation does not sleep (PEBBLE_VA_NOSLEEP), no nonce is rejected on purpose, and no
// authorization is reused, so every order solves its challenges.
func StartPebble(t testing.TB, opts PebbleOptions) *Pebble {
	t.Helper()
	pebbleBin, challBin := pebbleTool(t, "pebble"), pebbleTool(t, "pebble-challtestsrv")
	dir := t.TempDir()
	p := &Pebble{CARootFile: filepath.Join(dir, "listener-root.pem")}

	// Pebble's own HTTPS listeners (the directory, management) get a
	// certificate of a CA made for this test.
	ca := NewTestCA(t)
	certPEM, keyPEM := ca.Issue(t, time.Now().Add(24*time.Hour), "127.0.0.1", "localhost")
	p.CARootPEM = ca.RootPEM
	certFile, keyFile := filepath.Join(dir, "listener.pem"), filepath.Join(dir, "listener.key")
	for path, b := range map[string][]byte{p.CARootFile: ca.RootPEM, certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}

	// The DNS server: every A query is answered with 127.0.0.1, AAAA with nothing; its challenge servers are off.
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	challMgmt := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	chall := startProcess(t, "pebble-challtestsrv", exec.Command(challBin,
		"-dnsserver", dnsAddr, "-management", challMgmt, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""))
	Eventually(t, 10*time.Second, "pebble-challtestsrv up", func() bool { return chall.running(t) && dials(challMgmt) })

	listen := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	p.mgmt = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	profile := map[string]any{"description": "Lucid's tests"}
	if opts.Validity > 0 {
		profile["validityPeriod"] = int64(opts.Validity / time.Second)
	}
	config, err := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress":           listen,
		"managementListenAddress": p.mgmt,
		"certificate":             certFile,
		"privateKey":              keyFile,
		"httpPort":                opts.HTTPPort,
		"tlsPort":                 opts.TLSPort,
		"ocspResponderURL":        "",
		"keyAlgorithm":            "ecdsa",
		"profiles":                map[string]any{"default": profile},
	}})
	if err != nil {
		t.Fatal(err)
	}
	configFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(configFile, config, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pebbleBin, "-config", configFile, "-dnsserver", dnsAddr)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	peb := startProcess(t, "pebble", cmd)
	p.DirectoryURL = "https://" + listen + "/dir"
	Eventually(t, 10*time.Second, "pebble answers its directory", func() bool {
		if !peb.running(t) {
			return false
		}
		resp, err := p.client.Get(p.DirectoryURL)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK && dials(p.mgmt)
	})
	return p
}

// IssuingRoots fetches the root Pebble signs certificates under (a new one each run): the one root a client
// of the server under test trusts.
func (p *Pebble) IssuingRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("fetch Pebble's issuing root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("fetch Pebble's issuing root: %s %v", resp.Status, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("Pebble's issuing root is not PEM: %q", b)
	}
	return pool
}

func pebbleTool(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("LUCID_PEBBLE_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if !isFile(p) {
			Missing(t, name+" (LUCID_PEBBLE_DIR="+dir+" has none; scripts/build-pebble.sh builds it)")
		}
		return p
	}
	return Tool(t, name, "")
}

// process is a child run for a test: killed when the test ends, its output shown when the test failed.
type process struct {
	out  SyncBuffer
	done chan struct{}
	err  error
}

func startProcess(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// running reports that the process runs, and fails t at once when it has ended.
func (p *process) running(t testing.TB) bool {
	t.Helper()
	select {
	case <-p.done:
		t.Fatalf("exited while starting (%v):\n%s", p.err, p.out.String())
		return false
	default:
		return true
	}
}

func dials(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
