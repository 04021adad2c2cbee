package mesh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
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
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/service"
)

// testToken is the controller's mesh token; the services hold enrolment
// tokens derived from it (enrolment), the operator testOperator.
const (
	testToken    = "mesh-bootstrap-token-for-tests-0123456789"
	testOperator = "operator-token-for-tests-0123456789abcdef"
)

// enrolment is what svc's LUCID_MESH_TOKEN holds.
func enrolment(svc string) string { return meshapi.EnrolmentToken(testToken, svc) }

// controller is a mesh controller run in-process for a test.
type controller struct {
	url  string
	log  *testenv.SyncBuffer
	stop func() error // cancels and waits for a clean exit
	// exited says whether the controller has returned, without waiting.
	exited func() bool
	// dial reaches the controller; nil is loopback TCP.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// startController runs `lucid mesh` with env on a free port, with mTLS on
// (it certifies itself) unless env sets LUCID_MESH_URL to "".
func startController(t testing.TB, env map[string]string) *controller {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	c, https := launchController(t, addr, nil, env)
	testenv.Eventually(t, 10*time.Second, "mesh controller ready", func() bool {
		return service.Probe(context.Background(), addr, "/ready", https) == nil
	})
	return c
}

// startControllerOn runs `lucid mesh` with env (as startController does) on
// mem, for tests in a synctest bubble; it returns once the controller
// serves.
func startControllerOn(t *testing.T, mem *testenv.MemNet, env map[string]string) *controller {
	t.Helper()
	const addr = "127.0.0.1:8088"
	ln, err := mem.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := launchController(t, addr, ln, env)
	c.dial = mem.DialContext
	// Every goroutine of the bubble blocks durably only once the
	// controller has provisioned and waits for connections, or has quit.
	synctest.Wait()
	if c.exited() {
		t.Fatalf("mesh controller quit at start: %v\n%s", c.stop(), c.log.String())
	}
	return c
}

// launchController runs the controller at addr (on ln if not nil) and
// registers its stop; https says whether it serves TLS.
func launchController(t testing.TB, addr string, ln net.Listener, env map[string]string) (c *controller, https bool) {
	base := map[string]string{
		"LUCID_ADDR":             addr,
		"LUCID_DATA_DIR":         t.TempDir(),
		"LUCID_MESH_TOKEN":       testToken,
		"LUCID_MESH_URL":         "https://" + addr,
		"LUCID_SHUTDOWN_TIMEOUT": "10s",
		service.EnvOperatorHash:  auth.OperatorTokenHash(testOperator),
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
	c = &controller{url: scheme + "://" + addr, log: &testenv.SyncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.MainOn(ctx, ln, "mesh", New(), envconfig.Map(base), c.log) }()
	var once sync.Once
	var stopErr error
	c.stop = func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	c.exited = func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
			return false
		}
	}
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("mesh stopped with %v", err)
		}
		if t.Failed() {
			t.Logf("mesh log:\n%s", c.log.String())
		}
	})
	return c, scheme == "https"
}

// remote is the issuer svc's identity gets its leaves from.
func (c *controller) remote(svc string) *meshtls.Remote {
	r := meshtls.NewRemote(c.url, enrolment(svc))
	r.SetDialContext(c.dial)
	return r
}

func (c *controller) identity(t testing.TB, svc string, opts meshtls.Options) *meshtls.Identity {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := meshtls.Obtain(ctx, svc, c.remote(svc), opts)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// client is a mesh API client that reaches the controller as service svc
// over mTLS, with no token.
func (c *controller) client(t *testing.T, svc string) *meshapi.Client {
	id := c.identity(t, svc, meshtls.Options{})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: id.Transport(nil, func(peer string) bool { return catalog.MayCall(svc, peer) })}
	return meshapi.New(c.url, "", hc)
}

// bearer is a mesh API client without a mesh certificate that presents
// token: the operator's, or a service's enrolment token.
func (c *controller) bearer(token string) *meshapi.Client {
	return meshapi.New(c.url, token, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.dial, TLSClientConfig: insecureTLS()}})
}

// operator is the operator's client.
func (c *controller) operator() *meshapi.Client { return c.bearer(testOperator) }

func TestCertificates(t *testing.T) {
	c := startController(t, nil)

	engine := c.identity(t, "engine", meshtls.Options{})
	if left := time.Until(engine.NotAfter()); left < 71*time.Hour || left > 73*time.Hour {
		t.Errorf("leaf lifetime %s, want 72 h", left)
	}

	t.Run("the bundle verifies only with the asking service's enrolment token", func(t *testing.T) {
		for name, tok := range map[string]string{
			"a wrong token":           "another-token-of-the-required-length-000",
			"the mesh token itself":   testToken,
			"another service's token": enrolment("gateway"),
		} {
			_, err := meshtls.NewRemote(c.url, tok).Bundle(context.Background(), "engine")
			if err == nil || !strings.Contains(err.Error(), "MAC") {
				t.Errorf("engine's bundle checked with %s = %v, want a MAC mismatch", name, err)
			}
		}
		for _, svc := range []string{"engine", "gateway", "datachain"} {
			if _, err := meshtls.NewRemote(c.url, enrolment(svc)).Bundle(context.Background(), svc); err != nil {
				t.Errorf("%s's bundle with its own enrolment token: %v", svc, err)
			}
		}
	})
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	t.Run("only a random nonce and a Lucid service get a MAC", func(t *testing.T) {
		// A chosen text would come back with a MAC over it and the bundle.
		good := strings.Repeat("0", 32)
		for _, query := range []string{
			"service=engine", "nonce=short&service=engine", "nonce=" + strings.Repeat("g", 32) + "&service=engine",
			"nonce=-----BEGIN%20CERTIFICATE-----" + strings.Repeat("0", 3) + "&service=engine",
			"nonce=" + good, "nonce=" + good + "&service=payments", "nonce=" + good + "&service=mesh",
		} {
			resp, err := insecure.Get(c.url + "/certificates/ca?" + query)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(meshapi.BundleMACHeader) != "" {
				t.Errorf("%q: %d, MAC %q", query, resp.StatusCode, resp.Header.Get(meshapi.BundleMACHeader))
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
	t.Run("a service's enrolment token yields its own identity only", func(t *testing.T) {
		refused := []string{"", "wrong", testToken, testOperator, enrolment("gateway"), enrolment("anchoring"), enrolment("engine") + "x", strings.ToUpper(enrolment("engine"))}
		for _, tok := range refused {
			if resp := post("/certificates/engine", tok, `{"csr":""}`); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("engine's leaf with token %.12q...: %s, want 401", tok, resp.Status)
			}
		}
		// The real issuer, holding the gateway's token, asks for engine's
		// leaf: refused (here already by the bundle, MAC'd for engine).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := meshtls.Obtain(ctx, "engine", meshtls.NewRemote(c.url, enrolment("gateway")), meshtls.Options{}); err == nil {
			t.Error("the gateway's enrolment token obtained engine's identity")
		}
		// Nobody obtains the controller's identity over the API, not even
		// with the mesh token or a token derived for it.
		for _, tok := range []string{testToken, enrolment("mesh")} {
			if resp := post("/certificates/mesh", tok, `{"csr":""}`); resp.StatusCode != http.StatusForbidden {
				t.Errorf("the controller's leaf: %s, want 403", resp.Status)
			}
		}
		log := c.log.String()
		for _, tok := range append(refused[1:], enrolment("engine"), enrolment("mesh")) {
			if strings.Contains(log, tok) {
				t.Errorf("a token (%.6q...) reached the log", tok)
			}
		}
		if !strings.Contains(log, "refused a certificate request") {
			t.Error("the refusals are not logged")
		}
	})
	t.Run("the operator's bundle verifies with the operator's key alone", func(t *testing.T) {
		// lucidctl checks the bundle it trusts with the operator's
		// credentials against a key no container holds: the gateway's
		// token, or any service's, does not pass for it.
		if _, err := meshtls.NewRemote(c.url, enrolment(meshapi.OperatorBundle)).Bundle(context.Background(), meshapi.OperatorBundle); err != nil {
			t.Errorf("the operator's bundle with the operator's key: %v", err)
		}
		for _, svc := range []string{"gateway", "engine"} {
			if _, err := meshtls.NewRemote(c.url, enrolment(svc)).Bundle(context.Background(), meshapi.OperatorBundle); err == nil || !strings.Contains(err.Error(), "MAC") {
				t.Errorf("the operator's bundle checked with %s's enrolment token = %v, want a MAC mismatch", svc, err)
			}
		}
		// The operator's key yields no identity.
		if resp := post("/certificates/"+meshapi.OperatorBundle, enrolment(meshapi.OperatorBundle), `{"csr":""}`); resp.StatusCode != http.StatusNotFound {
			t.Errorf("a leaf for the operator's key: %s, want 404", resp.Status)
		}
	})
	t.Run("unknown service and bad CSR", func(t *testing.T) {
		if resp := post("/certificates/payments", testToken, `{"csr":""}`); resp.StatusCode != http.StatusNotFound {
			t.Errorf("unknown service: %s", resp.Status)
		}
		if resp := post("/certificates/engine", enrolment("engine"), `{"csr":"junk"}`); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("bad CSR: %s", resp.Status)
		}
	})
	t.Run("a mesh member and the operator may read, nobody else", func(t *testing.T) {
		for _, tok := range []string{"", testToken, enrolment("blocks")} {
			var ae *api.Error
			if _, err := c.bearer(tok).EnvoyBootstrap(context.Background(), "engine"); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
				t.Errorf("envoy bootstrap with token %.6q... and no certificate: %v, want 401", tok, err)
			}
		}
		if _, err := c.client(t, "blocks").EnvoyBootstrap(context.Background(), "engine"); err != nil {
			t.Errorf("envoy bootstrap with a mesh certificate: %v", err)
		}
		if _, err := c.operator().EnvoyBootstrap(context.Background(), "engine"); err != nil {
			t.Errorf("envoy bootstrap with the operator credential: %v", err)
		}
	})
}

// TestOperatorActions: rotating the root and registering or deregistering
// outside services need the operator credential; neither a mesh
// certificate nor the mesh token nor an enrolment token grants them.
func TestOperatorActions(t *testing.T) {
	c := startController(t, nil) // no Consul: the registry answers 503 once let in
	ctx := context.Background()
	actions := map[string]func(*meshapi.Client) error{
		"rotate": func(m *meshapi.Client) error { _, err := m.Rotate(ctx); return err },
		"register": func(m *meshapi.Client) error {
			return m.Register(ctx, meshapi.Registration{Name: "auth", Address: "10.0.0.1", Port: 80})
		},
		"deregister": func(m *meshapi.Client) error { return m.Deregister(ctx, "auth") },
	}
	callers := map[string]*meshapi.Client{
		"a mesh member":        c.client(t, "gateway"),
		"the mesh token":       c.bearer(testToken),
		"an enrolment token":   c.bearer(enrolment("gateway")),
		"no credential":        c.bearer(""),
		"a wrong operator one": c.bearer(testOperator + "x"),
	}
	for action, do := range actions {
		for who, m := range callers {
			var ae *api.Error
			if err := do(m); !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
				t.Errorf("%s by %s: %v, want 403", action, who, err)
			}
		}
	}
	if !strings.Contains(c.log.String(), "refused an operator action") {
		t.Error("the refusals are not logged")
	}
	for _, tok := range []string{testToken, enrolment("gateway"), testOperator} {
		if strings.Contains(c.log.String(), tok) {
			t.Errorf("a token (%.6q...) reached the log", tok)
		}
	}
	var ae *api.Error
	if err := actions["register"](c.operator()); !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("register by the operator without Consul: %v, want 503 (let in, no registry)", err)
	}
	if r, err := c.operator().Rotate(ctx); err != nil || r.Fingerprint == "" {
		t.Errorf("rotate by the operator: %v %v", r, err)
	}
}

func TestSigningIsRateLimited(t *testing.T) {
	c := startController(t, map[string]string{"LUCID_MESH_SIGN_RATE": "5"})
	client := c.bearer(enrolment("engine"))
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
	// The engine spent its budget, not the others': the data chain's
	// request is signed at once.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	if _, _, err := c.remote("datachain").Issue(context.Background(), "datachain", csr); err != nil {
		t.Fatalf("the data chain's leaf after the engine spent its signing budget: %v", err)
	}
}

// TestRootRotationKeepsTheMeshTalking: identities issued before a
// rotation and after it verify each other both ways.
func TestRootRotationKeepsTheMeshTalking(t *testing.T) {
	c := startController(t, nil)
	before := c.identity(t, "engine", meshtls.Options{})
	rotated, err := c.operator().Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Fingerprint == "" {
		t.Fatal("no fingerprint")
	}
	var ae *api.Error
	if _, err := c.operator().Rotate(context.Background()); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
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
	return serveOn(t, ln, id)
}

// serveOn serves the caller's name over mTLS as id on ln, and returns its URL.
func serveOn(t *testing.T, ln net.Listener, id *meshtls.Identity) string {
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
	issuer := meshtls.NewRemote(c.url, enrolment("engine"))
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
		"LUCID_ADDR":        busy.Addr().String(),
		"LUCID_DATA_DIR":    t.TempDir(),
		"LUCID_MESH_TOKEN":  testToken,
		"CONSUL_HOST":       "127.0.0.1",
		"CONSUL_PORT":       strconv.Itoa(testenv.FreePort(t)), // nobody there
		"CONSUL_HTTP_TOKEN": testManagement,
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
