package meshapi

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// The derivations are a contract between the controller and whatever
// renders the services' environments: known answers pin them, so a change
// that would lock every deployed service out fails here first.
func TestCredentialsKnownAnswers(t *testing.T) {
	const mesh = "mesh-token-0123456789abcdef0123456789"
	if got, want := EnrolmentToken(mesh, "engine"), "9d16dd83a9912a6e80c49bad27add00d645fefcf8dcc484711e46fc9bc03bc9d"; got != want {
		t.Errorf("EnrolmentToken = %s, want %s (HMAC-SHA256(mesh, \"lucid-mesh-enrolment-v1/engine\"))", got, want)
	}
	acc, sec := ConsulToken("0b1f4c52-7a4e-4f53-9d4c-5b8e0f6a1c3d", "gateway")
	if acc != "fe1f26e5-99d9-484d-91cc-2a3021ca88ff" || sec != "0d5030bc-713c-4486-9149-9632ab6ad740" {
		t.Errorf("ConsulToken = %s, %s", acc, sec)
	}
}

func TestCredentialsAreDistinct(t *testing.T) {
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]string{}
	add := func(what, v string) {
		if prev, ok := seen[v]; ok {
			t.Errorf("%s equals %s", what, prev)
		}
		seen[v] = what
	}
	for _, secret := range []string{"mesh-token-0123456789abcdef0123456789", "another-token-0123456789abcdef01234567"} {
		for _, svc := range []string{"gateway", "engine", "anchoring", "blocks", "datachain", "mesh"} {
			add("enrolment "+secret[:4]+"/"+svc, EnrolmentToken(secret, svc))
			acc, sec := ConsulToken(secret, svc)
			if !uuid4.MatchString(acc) || !uuid4.MatchString(sec) {
				t.Errorf("ConsulToken(%s) = %s, %s: not version-4 UUIDs", svc, acc, sec)
			}
			add("accessor "+secret[:4]+"/"+svc, acc)
			add("secret "+secret[:4]+"/"+svc, sec)
		}
	}
}

const management = "3f0c8a52-9d1e-4b7a-8c65-2e4f1a9b7d30"

func TestConsulAgentConfig(t *testing.T) {
	got, err := ConsulAgentConfig(management)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		ACL struct {
			Enabled                bool              `json:"enabled"`
			DefaultPolicy          string            `json:"default_policy"`
			EnableTokenPersistence bool              `json:"enable_token_persistence"`
			Tokens                 map[string]string `json:"tokens"`
		} `json:"acl"`
	}
	if err := json.Unmarshal(got, &c); err != nil {
		t.Fatal(err)
	}
	if !c.ACL.Enabled || c.ACL.DefaultPolicy != "deny" || !c.ACL.EnableTokenPersistence ||
		c.ACL.Tokens["initial_management"] != management || c.ACL.Tokens["agent"] != management || len(c.ACL.Tokens) != 2 {
		t.Errorf("ConsulAgentConfig = %s", got)
	}
	// Consul wants the 36-character form; google/uuid also takes others.
	for _, bad := range []string{"", "not-a-uuid", strings.Repeat("k", 40), management + "0",
		strings.ReplaceAll(management, "-", ""), "{" + management + "}", "urn:uuid:" + management} {
		if _, err := ConsulAgentConfig(bad); err == nil {
			t.Errorf("ConsulAgentConfig(%q) accepted", bad)
		} else if bad != "" && strings.Contains(err.Error(), bad) {
			t.Errorf("the error shows the token: %v", err)
		}
	}
}

// TestConsulAgentConfigDeniesAnonymous runs the real agent with
// ConsulAgentConfig: without a token nothing of the catalog can be read or
// written; the management token can do both.
func TestConsulAgentConfigDeniesAnonymous(t *testing.T) {
	cfg, err := ConsulAgentConfig(management)
	if err != nil {
		t.Fatal(err)
	}
	agent := testenv.StartConsulAgentWithConfig(t, cfg)
	do := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+agent.Addr+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("X-Consul-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	register := `{"ID":"auth-1","Name":"auth","Address":"10.0.0.1","Port":80}`
	// The management token exists once the agent has a leader and has
	// bootstrapped ACLs.
	testenv.Eventually(t, 15*time.Second, "the management token registers a service", func() bool {
		code, _ := do(http.MethodPut, "/v1/agent/service/register", management, register)
		return code == http.StatusOK
	})
	testenv.Eventually(t, 10*time.Second, "the registration in the catalog", func() bool {
		_, body := do(http.MethodGet, "/v1/catalog/service/auth", management, "")
		return strings.Contains(body, "auth-1")
	})
	for _, path := range []string{"/v1/catalog/services", "/v1/catalog/service/auth", "/v1/health/service/auth", "/v1/agent/services", "/v1/catalog/nodes"} {
		code, body := do(http.MethodGet, path, "", "")
		if code == http.StatusOK && (strings.Contains(body, "auth") || strings.Contains(body, "10.0.0.1") || strings.Contains(body, "lucid-test")) {
			t.Errorf("anonymous GET %s reads the catalog: %s", path, body)
		}
	}
	for _, w := range []struct{ method, path, body string }{
		{http.MethodPut, "/v1/agent/service/register", `{"ID":"evil","Name":"engine","Address":"10.6.6.6","Port":8084}`},
		{http.MethodPut, "/v1/agent/service/deregister/auth-1", ""},
		{http.MethodPut, "/v1/catalog/register", `{"Node":"evil","Address":"10.6.6.6","Service":{"Service":"engine","Port":8084}}`},
		{http.MethodPut, "/v1/kv/lucid", "x"},
	} {
		if code, body := do(w.method, w.path, "", w.body); code != http.StatusForbidden {
			t.Errorf("anonymous %s %s: %d %s, want 403", w.method, w.path, code, body)
		}
	}
	if _, body := do(http.MethodGet, "/v1/agent/service/auth-1", management, ""); !strings.Contains(body, "10.0.0.1") {
		t.Errorf("auth-1 is gone after the anonymous attempts: %s", body)
	}
}
