package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/service"
)

const testToken = "mesh-bootstrap-token-for-tests-0123456789"

// controller is a mesh controller run in-process for a test.
type controller struct {
	url  string
	log  *testenv.SyncBuffer
	stop func() error // cancels and waits for a clean exit
}

// startController runs `lucid mesh` with env on a free port, with mTLS on
// (it certifies itself) unless env sets LUCID_MESH_URL to "".
func startController(t testing.TB, env map[string]string) *controller {
	t.Helper()
	port := testenv.FreePort(t)
	base := map[string]string{
		"LUCID_ADDR":             "127.0.0.1:" + strconv.Itoa(port),
		"LUCID_DATA_DIR":         t.TempDir(),
		"LUCID_MESH_TOKEN":       testToken,
		"LUCID_MESH_URL":         "https://127.0.0.1:" + strconv.Itoa(port),
		"LUCID_SHUTDOWN_TIMEOUT": "10s",
	}
	for k, v := range env {
		if v == "" {
			delete(base, k)
		} else {
			base[k] = v
		}
	}
	scheme := "https"
	if base["LUCID_MESH_URL"] == "" {
		scheme = "http"
	}
	c := &controller{url: scheme + "://127.0.0.1:" + strconv.Itoa(port), log: &testenv.SyncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Main(ctx, "mesh", New(), envconfig.Map(base), c.log) }()
	var once sync.Once
	var stopErr error
	c.stop = func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("mesh stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("mesh log:\n%s", c.log.String())
		}
	})
	testenv.Eventually(t, 10*time.Second, "mesh controller ready", func() bool {
		return service.Probe(context.Background(), base["LUCID_ADDR"], "/ready", scheme == "https") == nil
	})
	return c
}

func (c *controller) identity(t testing.TB, svc string, opts meshtls.Options) *meshtls.Identity {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := meshtls.Obtain(ctx, svc, meshtls.NewRemote(c.url, testToken), opts)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// client is a mesh API client that reaches the controller as service svc
// over mTLS and also holds the token.
func (c *controller) client(t *testing.T, svc string) *meshapi.Client {
	id := c.identity(t, svc, meshtls.Options{})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: id.Transport(nil, func(peer string) bool { return catalog.MayCall(svc, peer) })}
	return meshapi.New(c.url, testToken, hc)
}

func TestCertificates(t *testing.T) {
	c := startController(t, nil)

	engine := c.identity(t, "engine", meshtls.Options{})
	if left := time.Until(engine.NotAfter()); left < 71*time.Hour || left > 73*time.Hour {
		t.Errorf("leaf lifetime %s, want 72 h", left)
	}

	t.Run("a wrong token does not get the bundle accepted", func(t *testing.T) {
		_, err := meshtls.NewRemote(c.url, "another-token-of-the-required-length-000").Bundle(context.Background())
		if err == nil || !strings.Contains(err.Error(), "MAC") {
			t.Fatalf("Bundle with a wrong token = %v", err)
		}
	})
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	t.Run("only a random nonce gets a MAC", func(t *testing.T) {
		// A chosen text would come back with a MAC over it and the bundle.
		for _, nonce := range []string{"", "short", strings.Repeat("g", 32), "-----BEGIN%20CERTIFICATE-----" + strings.Repeat("0", 3)} {
			resp, err := insecure.Get(c.url + "/certificates/ca?nonce=" + nonce)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(meshapi.BundleMACHeader) != "" {
				t.Errorf("nonce %q: %d, MAC %q", nonce, resp.StatusCode, resp.Header.Get(meshapi.BundleMACHeader))
			}
		}
	})
	post := func(path, token, body string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, c.url+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := insecure.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	t.Run("issuing needs the token", func(t *testing.T) {
		for _, tok := range []string{"", "wrong", testToken + "x"} {
			if resp := post("/certificates/engine", tok, `{"csr":""}`); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("token %q: %s", tok, resp.Status)
			}
		}
		if strings.Contains(c.log.String(), testToken) {
			t.Error("the token reached the log")
		}
	})
	t.Run("unknown service and bad CSR", func(t *testing.T) {
		if resp := post("/certificates/payments", testToken, `{"csr":""}`); resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown service: %s", resp.Status)
		}
		if resp := post("/certificates/engine", testToken, `{"csr":"junk"}`); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("bad CSR: %s", resp.Status)
		}
	})
	t.Run("a mesh member may list, a stranger may not", func(t *testing.T) {
		resp, err := insecure.Get(c.url + "/envoy/engine/bootstrap")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("envoy bootstrap without token or certificate: %s", resp.Status)
		}
		id := c.identity(t, "blocks", meshtls.Options{})
		member := meshapi.New(c.url, "", &http.Client{Transport: id.Transport(nil, func(p string) bool { return p == "mesh" })})
		if _, err := member.EnvoyBootstrap(context.Background(), "engine"); err != nil {
			t.Errorf("envoy bootstrap with a mesh certificate: %v", err)
		}
	})
}

func TestSigningIsRateLimited(t *testing.T) {
	c := startController(t, map[string]string{"LUCID_MESH_SIGN_RATE": "5"})
	client := c.client(t, "gateway") // one signature
	var limited atomic.Int64
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.Issue(context.Background(), "engine", []byte("-"))
			var ae *api.Error
			if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := limited.Load(); n < 10 {
		t.Fatalf("%d of 20 immediate requests were rate-limited at 5/s, want most", n)
	}
}

// TestRootRotationKeepsTheMeshTalking: identities issued before a
// rotation and after it verify each other both ways.
func TestRootRotationKeepsTheMeshTalking(t *testing.T) {
	c := startController(t, nil)
	before := c.identity(t, "engine", meshtls.Options{})
	rotated, err := c.client(t, "gateway").Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Fingerprint == "" {
		t.Fatal("no fingerprint")
	}
	var ae *api.Error
	if _, err := c.client(t, "blocks").Rotate(context.Background()); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Fatalf("second rotation inside the overlap: %v, want 409", err)
	}
	after := c.identity(t, "anchoring", meshtls.Options{})
	url := serveAs(t, before)
	if got, err := callAs(after, url); err != nil || got != "anchoring" {
		t.Fatalf("new anchoring → old engine: %q %v", got, err)
	}
	blocks := c.identity(t, "blocks", meshtls.Options{})
	engineAfter := c.identity(t, "engine", meshtls.Options{})
	if got, err := callAs(blocks, serveAs(t, engineAfter)); err != nil || got != "blocks" {
		t.Fatalf("blocks → new engine: %q %v", got, err)
	}
}

// serveAs serves the caller's name over mTLS as id.
func serveAs(t *testing.T, id *meshtls.Identity) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := meshtls.Caller(r)
		_, _ = io.WriteString(w, caller)
	})}
	go func() {
		_ = srv.Serve(tls.NewListener(ln, id.ServerTLS(func(peer string) bool { return catalog.MayCall(peer, id.Service()) })))
	}()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String()
}

var callers sync.Map // *meshtls.Identity → *http.Client, so keep-alive works

func callAs(id *meshtls.Identity, url string) (string, error) {
	v, _ := callers.LoadOrStore(id, &http.Client{Timeout: 5 * time.Second,
		Transport: id.Transport(nil, func(peer string) bool { return catalog.MayCall(id.Service(), peer) })})
	resp, err := v.(*http.Client).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), err
}

func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }

// BenchmarkIssueHTTP is leaf issuance end to end: a fresh key and CSR, the
// bundle fetched and checked, the request over verified TLS, the signature,
// and the new chain checked on receipt. Run with -cpu 1 for one core.
func BenchmarkIssueHTTP(b *testing.B) {
	c := startController(b, map[string]string{"LUCID_MESH_SIGN_RATE": "100000", "LUCID_LOG_LEVEL": "warn"})
	issuer := meshtls.NewRemote(c.url, testToken)
	for b.Loop() {
		if _, err := meshtls.Obtain(context.Background(), "engine", issuer, meshtls.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestFailedStartExits: a controller that cannot listen exits with the
// error, even with its Consul sync running, so a supervisor can restart it.
func TestFailedStartExits(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env := envconfig.Map(map[string]string{
		"LUCID_ADDR":       busy.Addr().String(),
		"LUCID_DATA_DIR":   t.TempDir(),
		"LUCID_MESH_TOKEN": testToken,
		"CONSUL_HOST":      "127.0.0.1",
		"CONSUL_PORT":      strconv.Itoa(testenv.FreePort(t)), // nobody there
	})
	done := make(chan error, 1)
	go func() { done <- service.Main(context.Background(), "mesh", New(), env, io.Discard) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "listen") {
			t.Fatalf("Main = %v, want a listen error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the controller hangs after failing to listen")
	}
}
