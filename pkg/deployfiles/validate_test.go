package deployfiles

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func validate(t *testing.T, o ValidateOptions) []Problem {
	t.Helper()
	problems, err := Validate(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	return problems
}

func has(problems []Problem, rule, service, text string, line int) bool {
	return slices.ContainsFunc(problems, func(p Problem) bool {
		return p.Rule == rule && p.Service == service && strings.Contains(p.Message, text) && (line == 0 || p.Line == line)
	})
}

// TestPhase2ComposeIsRejected feeds the Phase 2 document's compose file:
// its 8086 clash, its undefined dependencies, its python healthchecks,
// its image names and its unset variables are all reported, with lines.
func TestPhase2ComposeIsRejected(t *testing.T) {
	problems := validate(t, ValidateOptions{ComposeFile: "../../testdata/phase2/docker-compose.core.yml", ImageName: "pickme/lucid-{service}", ImageTag: "latest-arm64"})
	for _, want := range []struct {
		rule, service, text string
		line                int
	}{
		{RulePortCollision, "lucid-service-mesh-controller", "8086/tcp is also published by lucid-block-manager", 41},
		{RuleUndefinedDep, "lucid-api-gateway", "lucid-auth-service", 22},
		{RuleUndefinedDep, "lucid-blockchain-engine", "lucid-mongodb", 71},
		{RuleUndefinedDep, "lucid-data-chain", "lucid-redis", 147},
		{RuleHealthcheck, "lucid-block-manager", "runs python", 126},
		{RuleImage, "lucid-api-gateway", "pickme/lucid-gateway:latest-arm64", 9},
		{RuleVariable, "", "${JWT_SECRET_KEY} is not set", 17},
		{RuleSecret, "lucid-api-gateway", "JWT_SECRET_KEY", 8},
	} {
		if !has(problems, want.rule, want.service, want.text, want.line) {
			t.Errorf("no %s problem for %s about %q at line %d", want.rule, want.service, want.text, want.line)
		}
	}
	if t.Failed() {
		for _, p := range problems {
			t.Log(p)
		}
	}
}

// TestRenderedFilesValidate is the round trip: what render writes,
// validate passes.
func TestRenderedFilesValidate(t *testing.T) {
	dir := t.TempDir()
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	writeRendered(t, dir, f)
	problems := validate(t, ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath), ImageName: "pickme/lucid-{service}", ImageTag: "v1"})
	for _, p := range problems {
		t.Errorf("rendered files: %s", p)
	}
	// The same files against other image names: every service is named.
	problems = validate(t, ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath), ImageName: "registry.local/{service}", ImageTag: "v1"})
	if n := len(problems); n != 6 {
		t.Errorf("%d image problems, want 6", n)
	}
	// A service given the operator's file holds secrets it does not use,
	// a cluster's gossip key among them.
	withGossip := append(append([]byte{}, f.Env...), []byte(ConsulGossipKey+"=c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n")...)
	if err := os.WriteFile(filepath.Join(dir, ServiceEnvPath("gateway")), withGossip, 0o600); err != nil {
		t.Fatal(err)
	}
	problems = validate(t, ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath), ImageName: "pickme/lucid-{service}", ImageTag: "v1"})
	if !has(problems, RuleExcessSecret, "lucid-api-gateway", "ENCRYPTION_KEY", 0) || !has(problems, RuleExcessSecret, "lucid-api-gateway", "LUCID_OPERATOR_TOKEN", 0) ||
		!has(problems, RuleExcessSecret, "lucid-api-gateway", ConsulGossipKey, 0) {
		t.Errorf("the gateway with every secret: %v", problems)
	}
	// Without its env file, a service says so.
	if err := os.Remove(filepath.Join(dir, ServiceEnvPath("gateway"))); err != nil {
		t.Fatal(err)
	}
	problems = validate(t, ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath)})
	if !has(problems, RuleEnvFile, "lucid-api-gateway", "does not exist", 0) || !has(problems, RuleSecret, "lucid-api-gateway", "JWT_SECRET_KEY", 0) {
		t.Errorf("missing env file not reported: %v", problems)
	}
}

func TestPortsAndVariables(t *testing.T) {
	dir := t.TempDir()
	compose := `services:
  a:
    image: x
    ports: ["127.0.0.1:8080:80", "9000:9000/udp", "127.0.0.2:7000:7000"]
    environment:
      - A=${DEFAULTED:-x}
      - B=$${NOT_A_VARIABLE}
      - C=${EMPTY_OK?}
      - D=${EMPTY_BAD:?must be set}
      - E=$PLAIN_MISSING
  b:
    image: x
    ports: ["8080:8080", "9000:9000/tcp", "127.0.0.3:7000:7000"]
`
	path := filepath.Join(dir, "compose.yml")
	env := filepath.Join(dir, ".env")
	if err := os.WriteFile(path, []byte(compose), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env, []byte("EMPTY_OK=\nEMPTY_BAD=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	problems := validate(t, ValidateOptions{ComposeFile: path, EnvFiles: []string{env}})
	var got []string
	for _, p := range problems {
		got = append(got, p.Rule+":"+p.Message)
	}
	want := []string{
		RulePortCollision + ":host port 8080/tcp is also published by a (line 4)",
		RuleVariable + ":${EMPTY_BAD} is empty in " + env,
		RuleVariable + ":${PLAIN_MISSING} is not set in " + env,
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSecretOnlyForInterpolation: a secret in --env-file does not reach
// the container, so a service that needs it is still reported.
func TestSecretOnlyForInterpolation(t *testing.T) {
	dir := t.TempDir()
	compose := "services:\n  lucid-api-gateway:\n    image: x/gateway:t\n    ports: [\"8080:8080\"]\n"
	path := filepath.Join(dir, "compose.yml")
	env := filepath.Join(dir, "vars.env")
	if err := os.WriteFile(path, []byte(compose), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env, []byte("JWT_SECRET_KEY="+strings.Repeat("k", 40)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	problems := validate(t, ValidateOptions{ComposeFile: path, EnvFiles: []string{env}, ImageName: "x/{service}", ImageTag: "t"})
	if !has(problems, RuleSecret, "lucid-api-gateway", "JWT_SECRET_KEY", 0) {
		t.Errorf("a secret only in --env-file passed: %v", problems)
	}
	if has(problems, RuleHealthcheck, "lucid-api-gateway", "", 0) {
		t.Errorf("a service without a compose healthcheck was flagged (the image has one): %v", problems)
	}
}

// TestProblemsComeInOneOrder: one port taken by four services gives the
// same problems in the same order every run (--json must be stable).
func TestProblemsComeInOneOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "compose.yml")
	compose := "services:\n  a:\n    image: x\n    ports: [\"127.0.0.1:8080:80\"]\n  b:\n    image: x\n    ports: [\"127.0.0.2:8080:80\"]\n  c:\n    image: x\n    ports: [\"127.0.0.3:8080:80\"]\n  d:\n    image: x\n    ports: [\"8080:80\"]\n"
	if err := os.WriteFile(path, []byte(compose), 0o600); err != nil {
		t.Fatal(err)
	}
	var first []string
	for i := range 20 {
		var got []string
		for _, p := range validate(t, ValidateOptions{ComposeFile: path}) {
			got = append(got, p.Message)
		}
		if i == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("run %d:\n%s\nfirst run:\n%s", i, strings.Join(got, "\n"), strings.Join(first, "\n"))
		}
	}
	if len(first) != 3 {
		t.Errorf("d's port on every address clashes with a, b and c; got %v", first)
	}
}

// TestRouteTableIsMountedAndChecked: a project's route table is checked
// by render, mounted read-only into the gateway alone, and validate
// reports it missing or broken, with the table's own lines.
func TestRouteTableIsMountedAndChecked(t *testing.T) {
	routes := []byte("routes:\n  - prefix: /v2/anchors\n    service: anchoring\n")
	if _, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "v1", Routes: []byte("routes:\n  - prefix: /x\n    service: nope\n")}); err == nil ||
		!strings.Contains(err.Error(), RoutesPath+":2") {
		t.Errorf("render took a broken route table: %v", err)
	}
	f, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "v1", Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	mount := "- ../gateway/routes.yaml:" + RoutesMount + ":ro"
	if n := strings.Count(string(f.Compose), mount); n != 1 {
		t.Errorf("the route table is mounted %d times, want once (into the gateway):\n%s", n, f.Compose)
	}
	if !strings.Contains(string(f.Compose), "LUCID_GATEWAY_ROUTES="+RoutesMount) {
		t.Errorf("the gateway is not told where its route table is:\n%s", f.Compose)
	}
	plain, err := Render(context.Background(), Options{ImageName: "pickme/lucid-{service}", ImageTag: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain.Compose), RoutesMount) {
		t.Error("without a route table, the compose file still mounts one")
	}

	dir := t.TempDir()
	write := func(rel string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, rf := range f.All() {
		write(rf.Path, rf.Content)
	}
	compose := filepath.Join(dir, filepath.FromSlash(ComposePath))
	problems := validate(t, ValidateOptions{ComposeFile: compose})
	if !has(problems, RuleMount, "lucid-api-gateway", "routes.yaml, which does not exist", 0) {
		t.Errorf("a missing route table is not reported: %v", problems)
	}
	write(RoutesPath, routes)
	for _, p := range validate(t, ValidateOptions{ComposeFile: compose}) {
		t.Errorf("with its route table in place: %s", p)
	}
	write(RoutesPath, []byte("routes:\n  - prefix: /x\n    service: engine\n    stirp: true\n  - prefix: /health\n    service: engine\n"))
	problems = validate(t, ValidateOptions{ComposeFile: compose})
	if !has(problems, RuleRoutes, "lucid-api-gateway", `unknown key "stirp" in routes[0] (did you mean "strip"?)`, 0) {
		t.Errorf("a broken route table is not reported: %v", problems)
	}
}

// writeRendered writes every rendered file under dir, as render does.
func writeRendered(t *testing.T, dir string, f *Files) {
	t.Helper()
	for _, rf := range f.All() {
		p := filepath.Join(dir, filepath.FromSlash(rf.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, rf.Content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
