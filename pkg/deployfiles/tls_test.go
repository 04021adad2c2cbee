package deployfiles

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/envfile"
)

// With the operator's certificate: the gateway alone gets the files'
// settings and the read-only mount, HTTPS and the plain port are
// published, the files are rendered into TLSDir, and nothing warns.
func TestRenderTLSFiles(t *testing.T) {
	ca := testenv.NewTestCA(t)
	cert, key := ca.Issue(t, time.Now().Add(time.Hour), "pi.example.net")
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "v1", PortOffset: 1000,
		TLS: &TLS{Cert: cert, Key: key, HTTPSPort: 443, HTTPPort: 80}})
	if err != nil {
		t.Fatal(err)
	}
	compose := string(f.Compose)
	for _, want := range []string{`- "1443:8080"`, `- "1080:8079"`, "- ../gateway/tls:" + TLSMount + ":ro"} {
		if strings.Count(compose, want) != 1 {
			t.Errorf("compose has %q %d times, want once:\n%s", want, strings.Count(compose, want), compose)
		}
	}
	if strings.Contains(compose, `"9080:8080"`) {
		t.Error("the gateway's plain port is still published")
	}
	gw := envOf(t, f, "gateway")
	if gw[EnvTLSCertFile] != TLSMount+"/tls.crt" || gw[EnvTLSKeyFile] != TLSMount+"/tls.key" || gw[EnvHTTPSPort] != "1443" || gw[EnvACMEDomains] != "" {
		t.Errorf("gateway env: %v", gw)
	}
	for _, s := range []string{"engine", "mesh", "datachain"} {
		for k := range envOf(t, f, s) {
			if strings.HasPrefix(k, "LUCID_TLS_") || strings.HasPrefix(k, "LUCID_ACME_") {
				t.Errorf("%s is given %s", s, k)
			}
		}
	}
	if string(f.TLSFiles[TLSDir+"/tls.key"]) != string(key) || string(f.TLSFiles[TLSDir+"/tls.crt"]) != string(cert) || len(f.TLSFiles) != 2 {
		t.Errorf("TLS files: %d", len(f.TLSFiles))
	}
	var opaque int
	for _, rf := range f.All() {
		if rf.Opaque {
			opaque++
		}
	}
	if opaque != 2 || len(f.Warnings) != 0 {
		t.Errorf("%d opaque files, warnings %q", opaque, f.Warnings)
	}

	// Written out, they validate without a problem or a warning.
	dir := t.TempDir()
	writeRendered(t, dir, f)
	problems, warnings, err := ValidateAll(context.Background(), ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath)})
	if err != nil || len(problems) != 0 || len(warnings) != 0 {
		t.Errorf("validate: %v %v %v", problems, warnings, err)
	}

	// A key of another certificate is refused, without its bytes.
	_, other := ca.Issue(t, time.Now().Add(time.Hour), "pi.example.net")
	_, err = Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "v1", TLS: &TLS{Cert: cert, Key: other, HTTPSPort: 443, HTTPPort: 80}})
	if err == nil || !strings.Contains(err.Error(), "tls.cert_file and tls.key_file") || strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("mismatched pair: %v", err)
	}
}

// With ACME: the gateway's env has the contract's keys; a CA root is
// mounted as the files are, and without one nothing is mounted.
func TestRenderTLSACME(t *testing.T) {
	ca := testenv.NewTestCA(t)
	acme := &ACME{Domains: []string{"pi.example.net", "api.example.net"}, Email: "ops@example.net", Directory: "https://127.0.0.1:14000/dir"}
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "v1", TLS: &TLS{ACME: acme, HTTPSPort: 8443, HTTPPort: 8081}})
	if err != nil {
		t.Fatal(err)
	}
	gw := envOf(t, f, "gateway")
	if gw[EnvACMEDomains] != "pi.example.net,api.example.net" || gw[EnvACMEEmail] != "ops@example.net" || gw[EnvACMEDirectory] != acme.Directory ||
		gw[EnvHTTPSPort] != "8443" || gw[EnvACMECARoot] != "" || gw[EnvTLSCertFile] != "" {
		t.Errorf("gateway env: %v", gw)
	}
	if strings.Contains(string(f.Compose), TLSMount) || len(f.TLSFiles) != 0 || !strings.Contains(string(f.Compose), `- "8081:8079"`) {
		t.Errorf("ACME without a CA root: files %d\n%s", len(f.TLSFiles), f.Compose)
	}
	acme.CARoot = ca.RootPEM
	f, err = Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "v1", TLS: &TLS{ACME: acme, HTTPSPort: 8443, HTTPPort: 8081}})
	if err != nil {
		t.Fatal(err)
	}
	if gw := envOf(t, f, "gateway"); gw[EnvACMECARoot] != TLSMount+"/acme-root.pem" || len(f.TLSFiles) != 1 || !strings.Contains(string(f.Compose), TLSMount) {
		t.Errorf("ACME with a CA root: %v, %d files", gw, len(f.TLSFiles))
	}
}

// Without TLS the gateway publishes plain HTTP on every address: render
// and validate warn; bound to the loopback, or with a certificate set by
// hand in the operator's env file, they do not.
func TestPlainHTTPWarns(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Warnings) != 1 || !strings.Contains(f.Warnings[0], "plain HTTP on every address of the host (port 8080)") {
		t.Errorf("render's warnings: %q", f.Warnings)
	}
	dir := t.TempDir()
	writeRendered(t, dir, f)
	compose := filepath.Join(dir, ComposePath)
	problems, warnings, err := ValidateAll(context.Background(), ValidateOptions{ComposeFile: compose})
	if err != nil || len(problems) != 0 || len(warnings) != 1 || warnings[0].Rule != RulePlainHTTP || warnings[0].Line == 0 || warnings[0].Service != "lucid-api-gateway" {
		t.Fatalf("validate: %v %v %v", problems, warnings, err)
	}
	byHand, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "v1",
		Existing: map[string]string{EnvTLSCertFile: "/certs/c.pem", EnvTLSKeyFile: "/certs/k.pem"}})
	if err != nil || len(byHand.Warnings) != 0 {
		t.Errorf("a certificate set by hand: %q %v", byHand.Warnings, err)
	}
	writeRendered(t, dir, byHand)
	if _, warnings, _ := ValidateAll(context.Background(), ValidateOptions{ComposeFile: compose}); len(warnings) != 0 {
		t.Errorf("validate, a certificate set by hand: %v", warnings)
	}
	if w := plainHTTPWarning(map[string]string{}, []string{"127.0.0.1:8080:8080"}); w != "" {
		t.Errorf("loopback only: %q", w)
	}
}

func envOf(t *testing.T, f *Files, service string) map[string]string {
	t.Helper()
	vals, err := envfile.Parse(f.ServiceEnvs[ServiceEnvPath(service)])
	if err != nil {
		t.Fatal(err)
	}
	return vals
}
