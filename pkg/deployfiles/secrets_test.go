package deployfiles

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
)

// TestDeployedSecretsTakesBackWhatRenderGave: the services' env files of a
// render give back every secret of the operator's file (the operator
// token as its hash), with Consul and without, and two renders with other
// secrets differ in every one.
func TestDeployedSecretsTakesBackWhatRenderGave(t *testing.T) {
	ctx := context.Background()
	for _, noConsul := range []bool{false, true} {
		a, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t", NoConsul: noConsul})
		if err != nil {
			t.Fatal(err)
		}
		da, err := ReadDeployedSecrets(auth.LocalHost, a.ServiceEnvs)
		if err != nil {
			t.Fatal(err)
		}
		set, unknown := da.OperatorValues(a.EnvValues)
		if len(unknown) != 0 {
			t.Errorf("noConsul=%v: unknown %v with the right operator token", noConsul, unknown)
		}
		for _, k := range []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN"} {
			if set[k] != a.EnvValues[k] {
				t.Errorf("noConsul=%v: %s not taken back as rendered", noConsul, k)
			}
		}
		if !noConsul && set[ConsulTokenKey] != a.EnvValues[ConsulTokenKey] {
			t.Errorf("%s not taken back as rendered", ConsulTokenKey)
		}
		if _, unknown := da.OperatorValues(map[string]string{"LUCID_OPERATOR_TOKEN": "another"}); !slices.Equal(unknown, []string{"LUCID_OPERATOR_TOKEN"}) {
			t.Errorf("another operator token: unknown %v", unknown)
		}
		if d := da.Differ(da, ""); len(d) != 0 {
			t.Errorf("a render differs from itself in %v", d)
		}

		b, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t", NoConsul: noConsul})
		if err != nil {
			t.Fatal(err)
		}
		db, err := ReadDeployedSecrets(auth.LocalHost, b.ServiceEnvs)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN", "LUCID_OPERATOR_TOKEN"}
		if !noConsul {
			want = append(want, ConsulTokenKey)
		}
		slices.Sort(want)
		if got := da.Differ(db, ""); !reflect.DeepEqual(got, want) {
			t.Errorf("noConsul=%v: two renders differ in %v, want %v", noConsul, got, want)
		}
	}
}

// TestDeployedSecretsOfASharedEnvFile: a release of before per-service
// env files holds the operator's file itself; it compares with a render
// of now.
func TestDeployedSecretsOfASharedEnvFile(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	old, err := ReadDeployedSecrets(auth.LocalHost, map[string][]byte{EnvPath: f.Env})
	if err != nil {
		t.Fatal(err)
	}
	now, err := ReadDeployedSecrets(auth.LocalHost, f.ServiceEnvs)
	if err != nil {
		t.Fatal(err)
	}
	if d := old.Differ(now, ""); len(d) != 0 {
		t.Errorf("the shared file and the services' files of one render differ in %v", d)
	}
}

// TestDeployedSecretsParseErrorNamesTheFileOnly: a broken file is named,
// its text is not.
func TestDeployedSecretsParseErrorNamesTheFileOnly(t *testing.T) {
	_, err := ReadDeployedSecrets(auth.LocalHost, map[string][]byte{ServiceEnvPath("gateway"): []byte("JWT_SECRET_KEY=\"s3cr3tvalue\n")})
	if err == nil || !strings.Contains(err.Error(), ServiceEnvPath("gateway")) || strings.Contains(err.Error(), "s3cr3tvalue") {
		t.Errorf("error %v", err)
	}
}

// TestDataBoundAreSecrets: every data-bound key is a secret render makes.
func TestDataBoundAreSecrets(t *testing.T) {
	for _, k := range DataBound {
		if !slices.Contains(Secrets, k) && !slices.Contains(ClusterSecrets, k) {
			t.Errorf("%s is data-bound but not in Secrets or ClusterSecrets", k)
		}
	}
}

// TestRotatedKeysReachOnlyTheirServices: after rotations, each previous
// values variable is in the env file of the one service that uses it (the
// gateway, the data chain, the mesh controller) and no other's, is hidden
// by redaction, and a release reads it as the previous value of its
// secret.
func TestRotatedKeysReachOnlyTheirServices(t *testing.T) {
	ctx := context.Background()
	first, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	values := maps.Clone(first.EnvValues)
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	for _, k := range keyring.Rotatable() {
		set, err := Rotate(values, Rotation{Key: k, Now: now, Overlap: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(values, set)
	}
	f, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t", Existing: values})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{keyring.JWTPrevious: "gateway", keyring.EncryptionPrevious: "datachain", keyring.MeshPrevious: "mesh"}
	for p, data := range f.ServiceEnvs {
		vals, err := envfile.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		for v, svc := range want {
			has := vals[v] != ""
			if has != (p == ServiceEnvPath(svc)) {
				t.Errorf("%s holds %s: %v", p, v, has)
			}
			if has && vals[v] != values[v] {
				t.Errorf("%s: %s is not the operator's", p, v)
			}
		}
	}
	deployed, err := ReadDeployedSecrets(auth.LocalHost, f.ServiceEnvs)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keyring.Rotatable() {
		if !deployed.Keeps(k, first.EnvValues[k]) || deployed.Keeps(k, values[k]) {
			t.Errorf("%s: the release does not keep the old value as previous", k)
		}
	}
	// The rendered files validate; the operator's file given to the
	// gateway holds previous keys it does not use.
	dir := t.TempDir()
	writeRendered(t, dir, f)
	vo := ValidateOptions{ComposeFile: filepath.Join(dir, ComposePath), ImageName: "x/{service}", ImageTag: "t"}
	for _, p := range validate(t, vo) {
		t.Errorf("rotated files: %s", p)
	}
	if err := os.WriteFile(filepath.Join(dir, ServiceEnvPath("gateway")), f.Env, 0o600); err != nil {
		t.Fatal(err)
	}
	if problems := validate(t, vo); !has(problems, RuleExcessSecret, "lucid-api-gateway", keyring.EncryptionPrevious, 0) {
		t.Errorf("the gateway with every previous key: %v", problems)
	}
	red := string(redactEnv(f.Env, nil))
	for _, v := range PreviousKeys {
		if strings.Contains(red, values[v]) {
			t.Errorf("redaction shows %s", v)
		}
	}
}

// withOperatorHashes are files with each LUCID_OPERATOR_TOKEN_SHA256
// replaced by hash(service).
func withOperatorHashes(t *testing.T, files map[string][]byte, hash func(service string) string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for p, b := range files {
		vals, err := envfile.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if vals["LUCID_OPERATOR_TOKEN_SHA256"] != "" {
			svc := strings.TrimSuffix(filepath.Base(p), ".env")
			if b, _, err = envfile.Update(p, b, map[string]string{"LUCID_OPERATOR_TOKEN_SHA256": hash(svc)}); err != nil {
				t.Fatal(err)
			}
		}
		out[p] = b
	}
	return out
}

// TestDeployedSecretsOfOperatorCredentials: each service's file on a host
// holds the hash of its own operator credential for that host, which
// tells whether an operator token is the deployed one. Releases rendered
// before per-host credentials (each service's for any host) or before
// per-service ones (the token's own hash in every file) hold the same
// token, in a form lucidctl no longer sends: recognised as such, said so,
// and replaced by a deploy without counting as another token. Another
// token's, or this token's for another host, are neither.
func TestDeployedSecretsOfOperatorCredentials(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	tok := f.EnvValues["LUCID_OPERATOR_TOKEN"]
	read := func(host string, files map[string][]byte) DeployedSecrets {
		t.Helper()
		d, err := ReadDeployedSecrets(host, files)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	bound, err := BindOperatorCredentials(f.ServiceEnvs, tok, "pi1")
	if err != nil {
		t.Fatal(err)
	}
	now := read("pi1", bound)
	perService := read("pi1", withOperatorHashes(t, f.ServiceEnvs, func(svc string) string {
		return auth.OperatorTokenHash(auth.LegacyOperatorCredential(tok, svc))
	}))
	ofToken := read("pi1", withOperatorHashes(t, f.ServiceEnvs, func(string) string { return auth.OperatorTokenHash(tok) }))
	otherHost := read("pi2", bound) // pi1's files on pi2: a restore of pi1's backup
	another, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	otherToken := read(auth.LocalHost, another.ServiceEnvs)
	none := read("pi1", withOperatorHashes(t, f.ServiceEnvs, func(string) string { return "" }))

	for _, tc := range []struct {
		name  string
		d     DeployedSecrets
		want  OperatorHashes
		stale bool
		why   string // in Refusal's why
	}{
		{"bound to the host", now, OperatorHashesBound, false, ""},
		{"per service", perService, OperatorHashesPerService, true, "pi1 runs a release rendered before per-host operator credentials"},
		{"of the token", ofToken, OperatorHashesOfToken, true, "pi1 runs a release rendered before per-service operator credentials"},
		{"bound to another host", otherHost, OperatorHashesOther, false, "or ones bound to another host"},
		{"of another token", otherToken, OperatorHashesOther, false, "of another LUCID_OPERATOR_TOKEN"},
		{"none", none, OperatorHashesNone, false, "hold no operator credential"},
	} {
		h := tc.d.OperatorHashesOf(tok)
		if h != tc.want || h.Stale() != tc.stale {
			t.Errorf("%s: hashes %v (stale %v), want %v", tc.name, h, h.Stale(), tc.want)
		}
		why, hint := h.Refusal("pi1")
		if !strings.Contains(why, tc.why) || (tc.why == "") != (why == "") || (why == "") != (hint == "") {
			t.Errorf("%s: refusal %q, hint %q", tc.name, why, hint)
		}
		if tc.stale && !strings.Contains(hint, "lucidctl deploy pi1") {
			t.Errorf("%s: the hint %q does not say to deploy the host", tc.name, hint)
		}
		if strings.Contains(why+hint, tok) {
			t.Errorf("%s: the refusal quotes the token", tc.name)
		}
		// The token the operator's file holds is the deployed one
		// whatever its form, unless it is another's or another host's.
		_, unknown := tc.d.OperatorValues(map[string]string{"LUCID_OPERATOR_TOKEN": tok})
		if wantUnknown := tc.want == OperatorHashesOther; (len(unknown) == 1) != wantUnknown {
			t.Errorf("%s: unknown %v with the operator's token", tc.name, unknown)
		}
		if _, unknown := tc.d.OperatorValues(map[string]string{"LUCID_OPERATOR_TOKEN": "another"}); tc.want != OperatorHashesNone && len(unknown) != 1 {
			t.Errorf("%s: another token is taken for the deployed one", tc.name)
		}
	}
	if h := now.OperatorHashesOf(""); h != OperatorHashesNone {
		t.Errorf("without a token: %v", h)
	}

	// A deploy of now over a release of before replaces the same token's
	// credentials, when the token tells; without it, per-service hashes
	// and per-host ones cannot be told apart from another token's.
	for name, d := range map[string]DeployedSecrets{"per service": perService, "of the token": ofToken, "bound": now} {
		if diff := d.Differ(now, tok); slices.Contains(diff, "LUCID_OPERATOR_TOKEN") {
			t.Errorf("%s: a release differs from a render of now in the operator token", name)
		}
	}
	if diff := now.Differ(read("pi1", withOperatorHashes(t, another.ServiceEnvs, func(svc string) string {
		return auth.OperatorTokenHash(auth.OperatorCredential(another.EnvValues["LUCID_OPERATOR_TOKEN"], svc, "pi1"))
	})), tok); !slices.Contains(diff, "LUCID_OPERATOR_TOKEN") {
		t.Errorf("another token's credentials bound to the host do not differ: %v", diff)
	}
	if diff := perService.Differ(now, ""); !slices.Contains(diff, "LUCID_OPERATOR_TOKEN") {
		t.Errorf("without the token, per-service hashes compare as the same token as per-host ones: %v", diff)
	}
	if diff := now.Differ(read("pi2", boundTo(t, f, tok, "pi2")), tok); slices.Contains(diff, "LUCID_OPERATOR_TOKEN") {
		t.Errorf("two hosts' files differ in the operator token: %v", diff)
	}
}

// boundTo are f's service env files bound to host.
func boundTo(t *testing.T, f *Files, token, host string) map[string][]byte {
	t.Helper()
	files, err := BindOperatorCredentials(f.ServiceEnvs, token, host)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestBindOperatorCredentials: binding gives each service the hash of its
// credential on the host and changes nothing else; files rendered by an
// older lucidctl (per service, or the token's hash) are bound too; files
// of another token, or with hashes and no token, are refused, naming the
// file and no value.
func TestBindOperatorCredentials(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	tok := f.EnvValues["LUCID_OPERATOR_TOKEN"]
	bound, err := BindOperatorCredentials(f.ServiceEnvs, tok, "pi1")
	if err != nil {
		t.Fatal(err)
	}
	if len(bound) != len(f.ServiceEnvs) {
		t.Fatalf("%d files bound of %d", len(bound), len(f.ServiceEnvs))
	}
	for p, data := range f.ServiceEnvs {
		was, err := envfile.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		got, err := envfile.Parse(bound[p])
		if err != nil {
			t.Fatal(err)
		}
		svc := strings.TrimSuffix(filepath.Base(p), ".env")
		for k, v := range was {
			switch {
			case k != "LUCID_OPERATOR_TOKEN_SHA256":
				if got[k] != v {
					t.Errorf("%s: %s changed", p, k)
				}
			case got[k] != auth.OperatorTokenHash(auth.OperatorCredential(tok, svc, "pi1")):
				t.Errorf("%s: not the hash of %s's credential on pi1", p, svc)
			}
		}
		if len(got) != len(was) {
			t.Errorf("%s: %d values, was %d", p, len(got), len(was))
		}
	}
	again, err := BindOperatorCredentials(bound, tok, "pi1")
	if err != nil || !reflect.DeepEqual(again, bound) {
		t.Errorf("binding twice changes the files: %v", err)
	}
	for name, hash := range map[string]func(string) string{
		"per service":  func(svc string) string { return auth.OperatorTokenHash(auth.LegacyOperatorCredential(tok, svc)) },
		"of the token": func(string) string { return auth.OperatorTokenHash(tok) },
	} {
		got, err := BindOperatorCredentials(withOperatorHashes(t, f.ServiceEnvs, hash), tok, "pi1")
		if err != nil || !reflect.DeepEqual(got, bound) {
			t.Errorf("%s: not bound as a render of now: %v", name, err)
		}
	}

	_, err = BindOperatorCredentials(f.ServiceEnvs, "another-operator-token-0123456789abcdefghij", "pi1")
	if err == nil || !strings.Contains(err.Error(), "another LUCID_OPERATOR_TOKEN") || strings.Contains(err.Error(), tok) {
		t.Errorf("files of another token: %v", err)
	}
	_, err = BindOperatorCredentials(f.ServiceEnvs, "", "pi1")
	if !errors.Is(err, ErrNoOperatorToken) {
		t.Errorf("without a token: %v", err)
	}
	if _, err := BindOperatorCredentials(f.ServiceEnvs, tok, ""); err == nil {
		t.Error("bound to no host")
	}
	noHash := withOperatorHashes(t, f.ServiceEnvs, func(string) string { return "" })
	if got, err := BindOperatorCredentials(noHash, "", "pi1"); err != nil || !reflect.DeepEqual(got, noHash) {
		t.Errorf("files without a hash, and no token: %v", err)
	}
}
