package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

func TestEveryCatalogServiceHasAnImplementation(t *testing.T) {
	for _, s := range catalog.Services {
		if apps[s.Name] == nil {
			t.Errorf("catalog service %q has no entry in apps", s.Name)
		}
	}
	if len(apps) != len(catalog.Services) {
		t.Errorf("apps has %d entries, the catalog %d", len(apps), len(catalog.Services))
	}
}

func TestHelpListsServices(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, s := range catalog.Services {
		if !strings.Contains(out.String(), "  "+s.Name+" ") {
			t.Errorf("--help does not list %s:\n%s", s.Name, out.String())
		}
	}
}

func TestGatewayWithoutSecretRefusesToStart(t *testing.T) {
	t.Setenv("JWT_SECRET_KEY", "")
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"gateway"}, &out, &errOut)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), "JWT_SECRET_KEY: is required") {
		t.Errorf("stderr does not name JWT_SECRET_KEY: %q", errOut.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"gatway"}, {"engine", "extra"}, {"engine", "--bogus"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("lucid %v: exit %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}

func TestVersionJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"version", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["go_version"] == "" {
		t.Errorf("version --json = %q (%v)", out.String(), err)
	}
}

// TestSecretsMatchCatalog checks that each service refuses to start without
// exactly the secrets the catalog says it needs, with the mesh on and off,
// and accepts them when set, so `lucidctl up` and the compose renderer
// provide what is needed.
func TestSecretsMatchCatalog(t *testing.T) {
	for _, mesh := range []bool{false, true} {
		base := map[string]string{}
		if mesh {
			base["LUCID_MESH_URL"] = "https://127.0.0.1:8088"
		}
		for _, s := range catalog.Services {
			// As service.Main reads them: the shared settings, then the app's.
			r := envconfig.New(envconfig.Map(base))
			service.LoadConfig(r, s.Name)
			apps[s.Name]().Configure(r)
			err := r.Err()
			required := s.RequiredSecrets(mesh)
			for _, key := range required {
				if err == nil || !strings.Contains(err.Error(), key) {
					t.Errorf("mesh %v: %s starts without %s, which the catalog lists", mesh, s.Name, key)
				}
			}
			set := maps.Clone(base)
			for _, key := range required {
				set[key] = strings.Repeat("k", catalog.SecretMinLen)
			}
			r = envconfig.New(envconfig.Map(set))
			service.LoadConfig(r, s.Name)
			apps[s.Name]().Configure(r)
			if err := r.Err(); err != nil {
				t.Errorf("mesh %v: %s refuses its catalog secrets: %v", mesh, s.Name, err)
			}
		}
	}
}

// TestEnvMatchesCatalog checks that the variables each service reads are
// exactly those the catalog lists for it (Service.Vars), so that its
// env file gives it all it uses and nothing else.
func TestEnvMatchesCatalog(t *testing.T) {
	// Settings that open every branch that reads more.
	full := map[string]string{"LUCID_MESH_URL": "https://127.0.0.1:8088", "CONSUL_HOST": "127.0.0.1"}
	for _, s := range catalog.Services {
		read := map[string]bool{}
		for _, env := range []map[string]string{{}, full} {
			r := envconfig.New(func(k string) (string, bool) {
				read[k] = true
				v, ok := env[k]
				return v, ok
			})
			service.LoadConfig(r, s.Name)
			apps[s.Name]().Configure(r)
		}
		for k := range read {
			if !s.Reads(k) {
				t.Errorf("%s reads %s, which the catalog does not list for it", s.Name, k)
			}
		}
		for _, k := range s.Vars() {
			if !read[k] {
				t.Errorf("the catalog lists %s for %s, which does not read it", k, s.Name)
			}
		}
	}
}

func TestHealthcheckCommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	t.Setenv("LUCID_ADDR", ":"+port)
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"engine", "healthcheck"}, &out, &errOut); code != 0 {
		t.Errorf("healthy: exit %d %s", code, errOut.String())
	}
	if code := run(context.Background(), []string{"engine", "healthcheck", "--ready"}, &out, &errOut); code != 1 {
		t.Errorf("unready with --ready: exit %d", code)
	}
	srv.Close()
	if code := run(context.Background(), []string{"engine", "healthcheck"}, &out, &errOut); code != 1 {
		t.Errorf("down: exit %d", code)
	}
}

// TestHealthcheckCommandOverTLS: with the mesh on, services serve TLS and
// the healthcheck speaks it (without a mesh certificate: health is open).
func TestHealthcheckCommandOverTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "https://"))
	t.Setenv("LUCID_ADDR", ":"+port)
	t.Setenv("LUCID_MESH_URL", "https://127.0.0.1:8088")
	t.Setenv("LUCID_MESH_TOKEN", strings.Repeat("t", catalog.SecretMinLen))
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"engine", "healthcheck"}, &out, &errOut); code != 0 {
		t.Errorf("healthy over TLS: exit %d %s", code, errOut.String())
	}
}

func TestGatewayRoutesPrintsAndChecksTheTable(t *testing.T) {
	t.Setenv("LUCID_GATEWAY_ROUTES", "")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"gateway", "routes"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "prefix: /api/v1/anchors") || errOut.Len() != 0 {
		t.Errorf("stdout %q, stderr %q", out.String(), errOut.String())
	}
	// -o writes a file, making its folder: a fresh checkout has no
	// configs/gateway.
	file := filepath.Join(t.TempDir(), "configs", "gateway", "routes.yaml")
	out.Reset()
	if code := run(context.Background(), []string{"gateway", "routes", "-o", file}, &out, &errOut); code != 0 {
		t.Fatalf("routes -o: exit %d: %s", code, errOut.String())
	}
	if data, err := os.ReadFile(file); err != nil || !strings.Contains(string(data), "prefix: /api/v1/anchors") || out.Len() != 0 {
		t.Errorf("routes -o: %v, file %q, stdout %q", err, data, out.String())
	}
	bad := t.TempDir() + "/routes.yaml"
	if err := os.WriteFile(bad, []byte("routes:\n  - prefix: /x\n    service: mesh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LUCID_GATEWAY_ROUTES", bad)
	out.Reset()
	errOut.Reset()
	if code := run(context.Background(), []string{"gateway", "routes"}, &out, &errOut); code != 2 {
		t.Errorf("a bad table: exit %d, want 2", code)
	}
	if out.Len() != 0 || !strings.Contains(errOut.String(), "routes.yaml:2: route 1 (/x)") {
		t.Errorf("stdout %q, stderr %q", out.String(), errOut.String())
	}
}
