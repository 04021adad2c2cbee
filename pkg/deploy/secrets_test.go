package deploy

import (
	"context"
	"errors"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
)

// render is a render with new secrets, as a fresh clone makes.
func render(t *testing.T) *deployfiles.Files {
	t.Helper()
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "x/{service}", ImageTag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// secretsFixture is a host (sshd only, no Docker) without a release.
func secretsFixture(t *testing.T) (*Deployer, *[]Event) {
	t.Helper()
	f := &fixture{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: filepath.Join(t.TempDir(), "production")}
	events := new([]Event)
	d, err := New(Config{Name: "pi", SSH: f.dial(t), Dir: f.dir, Reporter: ReporterFunc(func(e Event) { *events = append(*events, e) })})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, events
}

// deployed makes files the host's current release, as a deploy leaves it.
func deployed(t *testing.T, d *Deployer, files *deployfiles.Files) {
	t.Helper()
	ctx := context.Background()
	r := &Release{ID: "20260101T000000Z-v1", Version: "v1", Created: time.Unix(1, 0).UTC()}
	if err := d.h.writeRelease(ctx, r, files.Compose, files.ServiceEnvs, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.h.record(ctx, r, ReleaseLive); err != nil {
		t.Fatal(err)
	}
	if err := d.h.makeCurrent(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
}

// TestCheckSecrets: a host without a release takes any secrets; one with
// a release refuses a render with other secrets, naming every data-bound
// key and no value, and takes it when each is rotated on purpose; its own
// secrets pass.
func TestCheckSecrets(t *testing.T) {
	ctx := context.Background()
	d, events := secretsFixture(t)
	onHost, fresh := render(t), render(t)

	if err := d.CheckSecrets(ctx, fresh.ServiceEnvs, nil); err != nil {
		t.Fatalf("a host without a release: %v", err)
	}
	deployed(t, d, onHost)
	if err := d.CheckSecrets(ctx, onHost.ServiceEnvs, nil); err != nil {
		t.Fatalf("the host's own secrets: %v", err)
	}

	*events = nil
	err := d.CheckSecrets(ctx, fresh.ServiceEnvs, nil)
	var sc *SecretChangeError
	if !errors.As(err, &sc) || sc.Target != "pi" {
		t.Fatalf("new secrets: %v, want a *SecretChangeError of pi", err)
	}
	// Without a cluster there is no gossip key to refuse.
	bound := slices.DeleteFunc(slices.Clone(deployfiles.DataBound), func(k string) bool { return slices.Contains(deployfiles.ClusterSecrets, k) })
	if !sameSet(sc.Keys, bound) {
		t.Errorf("refused %v, want %v", sc.Keys, bound)
	}
	for _, k := range []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY"} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("%q does not name %s", err, k)
		}
	}
	said := err.Error()
	for _, e := range *events {
		said += "\n" + e.Message
	}
	for _, f := range []*deployfiles.Files{onHost, fresh} {
		for _, k := range deployfiles.Secrets {
			if v := f.EnvValues[k]; strings.Contains(said, v) {
				t.Errorf("the value of %s was said: %q", k, said)
			}
		}
	}

	// Rotating some is not rotating all.
	err = d.CheckSecrets(ctx, fresh.ServiceEnvs, []string{"ENCRYPTION_KEY"})
	if !errors.As(err, &sc) || slices.Contains(sc.Keys, "ENCRYPTION_KEY") || !slices.Contains(sc.Keys, "JWT_SECRET_KEY") {
		t.Errorf("--rotate ENCRYPTION_KEY: %v", err)
	}
	if err := d.CheckSecrets(ctx, fresh.ServiceEnvs, deployfiles.DataBound); err != nil {
		t.Errorf("every one rotated: %v", err)
	}

	// A secret no data is bound to may change: the service key, which only
	// services hold, with the mesh off.
	d, _ = secretsFixture(t)
	meshOff := func(values map[string]string) *deployfiles.Files {
		f, err := deployfiles.Render(ctx, deployfiles.Options{ImageName: "x/{service}", ImageTag: "t", Existing: values, Set: map[string]string{"LUCID_MESH_URL": ""}})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	before := meshOff(nil)
	deployed(t, d, before)
	values := maps.Clone(before.EnvValues)
	values["LUCID_SERVICE_KEY"] = ""
	after := meshOff(values)
	if after.EnvValues["LUCID_SERVICE_KEY"] == before.EnvValues["LUCID_SERVICE_KEY"] {
		t.Fatal("the service key was not made anew")
	}
	if err := d.CheckSecrets(ctx, after.ServiceEnvs, nil); err != nil {
		t.Errorf("a new LUCID_SERVICE_KEY: %v", err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(a, b)
}

// TestCheckSecretsRotation: a rotation that keeps the old value among the
// previous ones passes with --rotate and says so; one that drops it is
// still allowed with --rotate but said to drop it; dropping a previous
// encryption key the host holds is refused unless rotated on purpose.
func TestCheckSecretsRotation(t *testing.T) {
	ctx := context.Background()
	d, events := secretsFixture(t)
	onHost := render(t)
	deployed(t, d, onHost)
	rerender := func(values map[string]string) *deployfiles.Files {
		f, err := deployfiles.Render(ctx, deployfiles.Options{ImageName: "x/{service}", ImageTag: "t", Existing: values})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	values := maps.Clone(onHost.EnvValues)
	for _, k := range []string{"JWT_SECRET_KEY", "ENCRYPTION_KEY"} {
		set, err := deployfiles.Rotate(values, deployfiles.Rotation{Key: k, Now: time.Now(), Overlap: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(values, set)
	}
	rotated := rerender(values)
	var sc *SecretChangeError
	if err := d.CheckSecrets(ctx, rotated.ServiceEnvs, nil); !errors.As(err, &sc) || !sameSet(sc.Keys, []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY"}) {
		t.Fatalf("a rotation without --rotate: %v", err)
	}
	*events = nil
	if err := d.CheckSecrets(ctx, rotated.ServiceEnvs, []string{"JWT_SECRET_KEY", "ENCRYPTION_KEY"}); err != nil {
		t.Fatalf("a rotation with --rotate: %v", err)
	}
	said := ""
	for _, e := range *events {
		said += e.Message + "\n"
	}
	for _, k := range []string{"JWT_PREVIOUS_KEYS", "ENCRYPTION_PREVIOUS_KEYS"} {
		if !strings.Contains(said, "the old value kept in "+k) {
			t.Errorf("the check does not say the old value is kept in %s: %s", k, said)
		}
	}
	for _, k := range []string{"JWT_SECRET_KEY", "ENCRYPTION_KEY"} {
		if strings.Contains(said, onHost.EnvValues[k]) || strings.Contains(said, values[k]) {
			t.Errorf("a value of %s was said", k)
		}
	}

	// The rotation is deployed; dropping the old encryption key later
	// needs saying so.
	deployed(t, d, rotated)
	pruned := maps.Clone(values)
	pruned["ENCRYPTION_PREVIOUS_KEYS"] = ""
	next := rerender(pruned)
	if err := d.CheckSecrets(ctx, next.ServiceEnvs, nil); !errors.As(err, &sc) || !slices.Equal(sc.Keys, []string{"ENCRYPTION_PREVIOUS_KEYS"}) {
		t.Fatalf("dropping the previous encryption key: %v", err)
	}
	if err := d.CheckSecrets(ctx, next.ServiceEnvs, []string{"ENCRYPTION_PREVIOUS_KEYS"}); err != nil {
		t.Fatalf("dropping it with --rotate: %v", err)
	}
	// Dropping retired JWT keys needs nothing.
	pruned = maps.Clone(values)
	pruned["JWT_PREVIOUS_KEYS"] = ""
	if err := d.CheckSecrets(ctx, rerender(pruned).ServiceEnvs, nil); err != nil {
		t.Fatalf("dropping the previous JWT key: %v", err)
	}
	// A hard rotation (no previous value kept) is allowed, and said.
	hard := maps.Clone(values)
	hard["JWT_SECRET_KEY"], hard["JWT_PREVIOUS_KEYS"] = strings.Repeat("h", 48), ""
	*events = nil
	if err := d.CheckSecrets(ctx, rerender(hard).ServiceEnvs, []string{"JWT_SECRET_KEY"}); err != nil {
		t.Fatal(err)
	}
	if said := (*events)[len(*events)-1].Message; !strings.Contains(said, "JWT_SECRET_KEY (the old value dropped)") {
		t.Errorf("a hard rotation: %s", said)
	}
}

// withOperatorHashes is f's service env files with each
// LUCID_OPERATOR_TOKEN_SHA256 hash(service), as another render made them.
func withOperatorHashes(t *testing.T, f *deployfiles.Files, hash func(service string) string) *deployfiles.Files {
	t.Helper()
	out := *f
	out.ServiceEnvs = map[string][]byte{}
	for p, b := range f.ServiceEnvs {
		if svc := strings.TrimSuffix(filepath.Base(p), ".env"); strings.Contains(string(b), "LUCID_OPERATOR_TOKEN_SHA256=") {
			var err error
			if b, _, err = envfile.Update(p, b, map[string]string{"LUCID_OPERATOR_TOKEN_SHA256": hash(svc)}); err != nil {
				t.Fatal(err)
			}
		}
		out.ServiceEnvs[p] = b
	}
	return &out
}

// TestSecretsOfReleasesBeforePerHostCredentials: a host whose release was
// rendered before per-host operator credentials holds the same token in
// another form: a deploy binding them to the host keeps the token, and
// says so; another token's credentials are refused as before. Rolling
// back to such a release is said to leave lucidctl refused. A deploy of
// files not bound to the host is refused before anything changes.
func TestSecretsOfReleasesBeforePerHostCredentials(t *testing.T) {
	ctx := context.Background()
	f := render(t)
	tok := f.EnvValues["LUCID_OPERATOR_TOKEN"]
	d, events := secretsFixture(t)
	d.cfg.OperatorToken = tok
	bind := func(f *deployfiles.Files, token string) map[string][]byte {
		t.Helper()
		envs, err := deployfiles.BindOperatorCredentials(f.ServiceEnvs, token, "pi")
		if err != nil {
			t.Fatal(err)
		}
		return envs
	}
	legacy := withOperatorHashes(t, f, func(svc string) string { return auth.OperatorTokenHash(auth.LegacyOperatorCredential(tok, svc)) })
	deployed(t, d, legacy)
	*events = nil
	if err := d.CheckSecrets(ctx, bind(f, tok), nil); err != nil {
		t.Fatalf("binding the same token's credentials: %v", err)
	}
	if said := (*events)[len(*events)-1].Message; !strings.Contains(said, "of a release rendered before per-host ones, are bound to pi from now on") {
		t.Errorf("the secrets step says %q", said)
	}
	other := withOperatorHashes(t, f, func(svc string) string {
		return auth.OperatorTokenHash(auth.OperatorCredential("another-operator-token-0123456789abcdef", svc, "pi"))
	})
	var sc *SecretChangeError
	if err := d.CheckSecrets(ctx, other.ServiceEnvs, nil); !errors.As(err, &sc) || !slices.Contains(sc.Keys, "LUCID_OPERATOR_TOKEN") {
		t.Errorf("another token's credentials: %v", err)
	}

	// Bound now; a rollback to the release of before is said to leave
	// lucidctl's operator commands refused.
	boundFiles := *f
	boundFiles.ServiceEnvs = bind(f, tok)
	deployed(t, d, &boundFiles)
	*events = nil
	if err := d.CheckSecrets(ctx, legacy.ServiceEnvs, nil); err != nil {
		t.Fatal(err)
	}
	if said := (*events)[len(*events)-1].Message; !strings.Contains(said, "rendered before per-host operator credentials: pi's services will refuse lucidctl's operator commands") {
		t.Errorf("a rollback to a release of before: %q", said)
	}

	// Files not bound to pi: the rendered ones (the local stack's), or
	// another host's.
	for name, envs := range map[string]map[string][]byte{"as rendered": f.ServiceEnvs, "pi2's": func() map[string][]byte {
		envs, err := deployfiles.BindOperatorCredentials(f.ServiceEnvs, tok, "pi2")
		if err != nil {
			t.Fatal(err)
		}
		return envs
	}()} {
		if _, err := d.DryRun(ctx, Bundle{EnvFiles: envs}); err == nil || !strings.Contains(err.Error(), "not the operator token's bound to pi") {
			t.Errorf("a deploy of files %s: %v", name, err)
		}
	}
}

// TestEnvFilesThatCannotBeRead: an env file the host cannot read (a
// failing card's I/O error) fails the read of the release's env files,
// naming it, instead of coming back empty, which a backup would keep.
func TestEnvFilesThatCannotBeRead(t *testing.T) {
	t.Parallel() // each on its own sshd
	if _, err := os.Stat("/proc/self/mem"); err != nil {
		t.Skip("no /proc/self/mem to stand for a file whose reads fail")
	}
	f, _ := lockFixture(t)
	envDir := filepath.Join(f.dir, "releases", "r1", filepath.FromSlash(path.Dir(deployfiles.EnvPath)))
	if err := os.MkdirAll(envDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(envDir, "engine.env"), []byte("A=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("releases", "r1"), filepath.Join(f.dir, "current")); err != nil {
		t.Fatal(err)
	}
	// Reading the process's own memory from its start fails with EIO.
	broken := filepath.Join(envDir, "datachain.env")
	if err := os.Symlink("/proc/self/mem", broken); err != nil {
		t.Fatal(err)
	}
	h := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	if _, files, err := h.currentEnvFiles(context.Background()); err == nil || !strings.Contains(err.Error(), "datachain.env") {
		t.Fatalf("an unreadable env file: %v, files %v", err, slices.Sorted(maps.Keys(files)))
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	release, files, err := h.currentEnvFiles(context.Background())
	if err != nil || release != "r1" || len(files) != 1 || string(files[path.Dir(deployfiles.EnvPath)+"/engine.env"]) != "A=1\n" {
		t.Fatalf("the env files: %s %q %v", release, files, err)
	}
}
