package meshtls

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/meshca"
)

// fakeController is the mesh controller's enrolment, as its API promises
// it: the bundle MAC'd with the asking service's enrolment token, a leaf
// for the bearer of the service's own enrolment token only.
type fakeController struct {
	url   string
	mu    sync.Mutex
	asked []string // service= of each bundle request
}

func startFakeController(t *testing.T, meshToken string) *fakeController {
	t.Helper()
	ca := openCA(t, meshca.Options{})
	self := identity(t, ca, "mesh", Options{})
	f := &fakeController{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /certificates/ca", func(w http.ResponseWriter, r *http.Request) {
		svc, nonce := r.URL.Query().Get("service"), r.URL.Query().Get("nonce")
		f.mu.Lock()
		f.asked = append(f.asked, svc)
		f.mu.Unlock()
		body := meshca.EncodeCerts(ca.Bundle())
		w.Header().Set(meshapi.BundleMACHeader, meshapi.BundleMAC(meshapi.EnrolmentToken(meshToken, svc), nonce, body))
		_, _ = w.Write(body)
	})
	mux.HandleFunc("POST /certificates/{service}", func(w http.ResponseWriter, r *http.Request) {
		svc := r.PathValue("service")
		if r.Header.Get("Authorization") != "Bearer "+meshapi.EnrolmentToken(meshToken, svc) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"code":"LUCID_ERR_2001","message":"enrolment token required"}}`))
			return
		}
		var req meshapi.IssueRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		csr, err := meshca.ParseCSR([]byte(req.CSR))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		leaf, err := ca.Sign(r.Context(), csr, svc)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(meshapi.Issued{CertificateChain: string(leaf.ChainPEM()), CABundle: string(meshca.EncodeCerts(ca.Bundle())), NotAfter: leaf.NotAfter, SPIFFEID: meshca.SPIFFEID(svc).String()})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(tls.NewListener(ln, self.ServerTLS(nil))) }()
	t.Cleanup(func() { _ = srv.Close() })
	f.url = "https://" + ln.Addr().String()
	return f
}

func (f *fakeController) askedFor() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// TestRemoteEnrolsAsItsService: the remote issuer asks for the bundle as
// the service it obtains a leaf for, checks it with that service's
// enrolment token, and obtains the leaf with it; a token of another
// service, or the controller's mesh token, gets nothing.
func TestRemoteEnrolsAsItsService(t *testing.T) {
	const meshToken = "the-controllers-mesh-token-0123456789abcdef"
	f := startFakeController(t, meshToken)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := Obtain(ctx, "engine", NewRemote(f.url, meshapi.EnrolmentToken(meshToken, "engine")), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := id.Certificate().Leaf.URIs[0].String(); got != "spiffe://lucid/service/engine" {
		t.Errorf("leaf names %s", got)
	}
	if asked := f.askedFor(); len(asked) != 1 || asked[0] != "engine" {
		t.Errorf("bundle requests named %q, want one for engine", asked)
	}

	bundle, err := NewRemote(f.url, meshapi.EnrolmentToken(meshToken, "gateway")).Bundle(ctx, "gateway")
	if err != nil || len(bundle) == 0 {
		t.Errorf("the gateway's bundle with its own token: %d certificates, %v", len(bundle), err)
	}
	for name, tok := range map[string]string{
		"the gateway's enrolment token": meshapi.EnrolmentToken(meshToken, "gateway"),
		"the mesh token":                meshToken,
	} {
		_, _, err := NewRemote(f.url, tok).Issue(ctx, "engine", []byte("unused"))
		if err == nil || !strings.Contains(err.Error(), "MAC") {
			t.Errorf("engine's leaf with %s: %v, want the bundle's MAC refused", name, err)
		}
	}
	if _, _, err := NewRemote(strings.Replace(f.url, "https", "http", 1), meshapi.EnrolmentToken(meshToken, "engine")).Issue(ctx, "engine", nil); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("an http controller URL: %v, want refused", err)
	}
}
