package deployfiles

import (
	"context"
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
		da, err := ReadDeployedSecrets(a.ServiceEnvs)
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
		if d := da.Differ(da); len(d) != 0 {
			t.Errorf("a render differs from itself in %v", d)
		}

		b, err := Render(ctx, Options{ImageName: "x/{service}", ImageTag: "t", NoConsul: noConsul})
		if err != nil {
			t.Fatal(err)
		}
		db, err := ReadDeployedSecrets(b.ServiceEnvs)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN", "LUCID_OPERATOR_TOKEN"}
		if !noConsul {
			want = append(want, ConsulTokenKey)
		}
		slices.Sort(want)
		if got := da.Differ(db); !reflect.DeepEqual(got, want) {
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
	old, err := ReadDeployedSecrets(map[string][]byte{EnvPath: f.Env})
	if err != nil {
		t.Fatal(err)
	}
	now, err := ReadDeployedSecrets(f.ServiceEnvs)
	if err != nil {
		t.Fatal(err)
	}
	if d := old.Differ(now); len(d) != 0 {
		t.Errorf("the shared file and the services' files of one render differ in %v", d)
	}
}

// TestDeployedSecretsParseErrorNamesTheFileOnly: a broken file is named,
// its text is not.
func TestDeployedSecretsParseErrorNamesTheFileOnly(t *testing.T) {
	_, err := ReadDeployedSecrets(map[string][]byte{ServiceEnvPath("gateway"): []byte("JWT_SECRET_KEY=\"s3cr3tvalue\n")})
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
	deployed, err := ReadDeployedSecrets(f.ServiceEnvs)
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

// TestDeployedSecretsOfOperatorCredentials: each service's file holds the
// hash of its own operator credential, which tells whether an operator
// token is the deployed one; a release rendered before per-service
// credentials (the token's own hash in every file) knows the token too,
// and compares with a render of now as neither same nor different.
func TestDeployedSecretsOfOperatorCredentials(t *testing.T) {
	f, err := Render(context.Background(), Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	tok := f.EnvValues["LUCID_OPERATOR_TOKEN"]
	now, err := ReadDeployedSecrets(f.ServiceEnvs)
	if err != nil {
		t.Fatal(err)
	}
	legacyFiles := map[string][]byte{}
	for p, b := range f.ServiceEnvs {
		vals, err := envfile.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		if vals["LUCID_OPERATOR_TOKEN_SHA256"] != "" {
			b = []byte("LUCID_OPERATOR_TOKEN_SHA256=" + auth.OperatorTokenHash(tok) + "\n")
		}
		legacyFiles[p] = b
	}
	legacy, err := ReadDeployedSecrets(legacyFiles)
	if err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]DeployedSecrets{"per service": now, "legacy": legacy} {
		if _, unknown := d.OperatorValues(map[string]string{"LUCID_OPERATOR_TOKEN": tok}); len(unknown) != 0 {
			t.Errorf("%s: the deployed token is unknown", name)
		}
		if _, unknown := d.OperatorValues(map[string]string{"LUCID_OPERATOR_TOKEN": "another"}); len(unknown) != 1 {
			t.Errorf("%s: another token is taken for the deployed one", name)
		}
	}
	if d := legacy.Differ(now); slices.Contains(d, "LUCID_OPERATOR_TOKEN") {
		t.Errorf("a release of before per-service credentials differs from a render of now in the operator token")
	}
}
