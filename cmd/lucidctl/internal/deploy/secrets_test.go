package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/imagebuild"
)

// TestDryRunFromAFreshClone: a Pi whose current release was rendered
// elsewhere, and a fresh clone rendered here with new secrets. deploy
// --dry-run refuses before the build, naming ENCRYPTION_KEY and every
// other data-bound key that differs, never a value; with --rotate for each
// it gets past the check (to the build, which this test makes fail: no
// Docker is needed). A --rotate of no secret is a usage error.
func TestDryRunFromAFreshClone(t *testing.T) {
	ctx := context.Background()
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir, deployDir := project(t, s) // the fresh clone
	host, err := deployfiles.Render(ctx, deployfiles.Options{ImageName: "lucid-clitest/{service}", ImageTag: "t", NoConsul: true})
	if err != nil {
		t.Fatal(err)
	}
	rel := filepath.Join(deployDir, "releases", "20260101T000000Z-v1")
	for p, data := range host.ServiceEnvs {
		if err := envfile.WriteAtomic(filepath.Join(rel, filepath.FromSlash(p)), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("releases/20260101T000000Z-v1", filepath.Join(deployDir, "current")); err != nil {
		t.Fatal(err)
	}
	mine, err := envfile.Read(filepath.Join(dir, deployfiles.EnvPath))
	if err != nil {
		t.Fatal(err)
	}

	run := func(rotate ...string) (string, error) {
		io, _, out, errOut := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.ConfigPath = filepath.Join(dir, "lucid.yaml")
		opts := &Options{Env: env, Names: []string{"pi"}, DryRun: true, MinFreeMiB: 16, Rotate: rotate,
			Image: build.ImageFlags{Base: imagebuild.BaseScratch, Lucid: filepath.Join(t.TempDir(), "no-such-lucid")}}
		opts.SSH = sshFlags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true}, dockerSocket: "/var/run/docker.sock"}
		err := runDeploy(ctx, opts)
		said := out.String() + errOut.String()
		if err != nil {
			said += err.Error() + cli.Hint(err)
		}
		for _, vals := range []map[string]string{host.EnvValues, mine} {
			for _, k := range deployfiles.Secrets {
				if v := vals[k]; v != "" && strings.Contains(said, v) {
					t.Errorf("--rotate %v: the value of %s was said", rotate, k)
				}
			}
		}
		return said, err
	}

	said, err := run()
	var sc *deploy.SecretChangeError
	if !errors.As(err, &sc) || !strings.Contains(err.Error(), "pi") || !strings.Contains(err.Error(), "ENCRYPTION_KEY") {
		t.Fatalf("a fresh clone's dry run: %v, want a refusal naming pi and ENCRYPTION_KEY\n%s", err, said)
	}
	if h := cli.Hint(err); !strings.Contains(h, "lucidctl secrets pull --target pi") {
		t.Errorf("hint %q", h)
	}
	if strings.Contains(said, "no-such-lucid") {
		t.Error("the build ran before the refusal")
	}
	// Without Consul, its token is nobody's: every other data-bound key.
	want := []string{"ENCRYPTION_KEY", "JWT_SECRET_KEY", "LUCID_MESH_TOKEN", "LUCID_OPERATOR_TOKEN"}
	if !slices.Equal(sc.Keys, want) {
		t.Errorf("refused %v, want %v", sc.Keys, want)
	}

	// Rotating all but one still refuses, naming that one.
	_, err = run(want[1:]...)
	if !errors.As(err, &sc) || !slices.Equal(sc.Keys, want[:1]) {
		t.Errorf("all but ENCRYPTION_KEY rotated: %v", err)
	}

	said, err = run(want...)
	if errors.As(err, &sc) || !strings.Contains(said, "no-such-lucid") {
		t.Errorf("every changed key rotated: %v, want the check passed and the build reached\n%s", err, said)
	}
	if !strings.Contains(said, "replaced (--rotate)") {
		t.Errorf("the check does not say what it lets through:\n%s", said)
	}

	if _, err := run("NO_SUCH_KEY"); cli.ExitCode(ctx, err) != cli.ExitUsage {
		t.Errorf("--rotate NO_SUCH_KEY: %v, want a usage error", err)
	}
}
