package deploy

import (
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/spf13/pflag"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
)

// imageProject is a lucid.yaml and a pinned CA bundle: with
// SOURCE_DATE_EPOCH, all an image build's inputs besides the source.
func imageProject(t *testing.T) (env *cli.Env, certs string) {
	t.Helper()
	dir := t.TempDir()
	yml := "images:\n  name: example.invalid/lucid-{service}\n  tag: t1\nplatforms: [linux/amd64]\n"
	certs = filepath.Join(dir, "ca.pem")
	for file, content := range map[string]string{"lucid.yaml": yml, "ca.pem": "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	io, _, _, _ := iostreams.Test()
	env = cli.NewEnv(io, func(k string) string { return map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}[k] })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	return env, certs
}

// builtByBuild runs `lucidctl build ARGS --oci DIR` and returns the
// manifest digest of each image in the layout it wrote, by reference.
func builtByBuild(t *testing.T, env *cli.Env, args []string) map[string]string {
	t.Helper()
	oci := filepath.Join(t.TempDir(), "oci")
	cmd := build.NewCmd(env)
	cmd.SetArgs(append(args, "--oci", oci))
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("lucidctl build %v: %v", args, err)
	}
	p, err := layout.FromPath(oci)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range im.Manifests {
		out[m.Annotations["org.opencontainers.image.ref.name"]] = m.Digest.String()
	}
	return out
}

// builtByDeploy parses ARGS as deploy does and runs its build, returning
// the manifest digest of each image, by reference, and the release version.
func builtByDeploy(t *testing.T, env *cli.Env, args []string) (map[string]string, string) {
	t.Helper()
	opts := &Options{Env: env}
	fs := pflag.NewFlagSet("deploy", pflag.ContinueOnError)
	opts.Image.Add(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Config()
	if err != nil {
		t.Fatal(err)
	}
	built, version, err := buildImages(context.Background(), opts, cfg)
	if err != nil {
		t.Fatalf("deploy's build %v: %v", args, err)
	}
	out := map[string]string{}
	for _, b := range built {
		d, err := b.Images[0].Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out[b.Ref] = d.String()
	}
	return out, version
}

// TestDeployShipsWhatBuildMakes: the same image flags give the same image
// bytes (manifest digests, so configs and layers too) through lucidctl
// build and through deploy, compiled from source or from a ready binary,
// and a ready binary's release carries its stamped version.
func TestDeployShipsWhatBuildMakes(t *testing.T) {
	env, certs := imageProject(t)
	common := []string{"--platform", "linux/amd64", "--base", "scratch", "--ca-certs", certs}

	fromSource := append(slices.Clone(common), "--source", "../../../..")
	fromBuild := builtByBuild(t, env, fromSource)
	fromDeploy, _ := builtByDeploy(t, env, fromSource)
	if len(fromBuild) != 6 || !maps.Equal(fromBuild, fromDeploy) {
		t.Errorf("compiled from source:\nbuild  %v\ndeploy %v", fromBuild, fromDeploy)
	}

	const version = "v4.5.6-shipped"
	bin := filepath.Join(t.TempDir(), "lucid")
	gb := exec.Command("go", "build", "-ldflags", "-s -w -X github.com/pickme/lucid/pkg/buildinfo.Version="+version, "-o", bin, "./cmd/lucid")
	gb.Dir = "../../../.."
	gb.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
	if out, err := gb.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ready := append(slices.Clone(common), "--lucid", bin)
	fromBuild = builtByBuild(t, env, ready)
	fromDeploy, got := builtByDeploy(t, env, ready)
	if len(fromBuild) != 6 || !maps.Equal(fromBuild, fromDeploy) {
		t.Errorf("from --lucid:\nbuild  %v\ndeploy %v", fromBuild, fromDeploy)
	}
	if got != version {
		t.Errorf("a release of a binary stamped %s is labelled %q", version, got)
	}
}

// TestBuildAndDeployTakeTheSameImageFlags: every flag that decides the
// images' bytes is on both commands, meaning the same.
func TestBuildAndDeployTakeTheSameImageFlags(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	buildFlags, deployFlags := build.NewCmd(env).Flags(), newDeployCmd(env).Flags()
	var image build.ImageFlags
	fs := pflag.NewFlagSet("image", pflag.ContinueOnError)
	image.Add(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		for cmd, flags := range map[string]*pflag.FlagSet{"build": buildFlags, "deploy": deployFlags} {
			g := flags.Lookup(f.Name)
			if g == nil || g.Usage != f.Usage || g.DefValue != f.DefValue || g.Value.Type() != f.Value.Type() {
				t.Errorf("%s --%s is not the image flag", cmd, f.Name)
			}
		}
	})
	if fs.Lookup("ca-certs") == nil || fs.Lookup("lucid") == nil {
		t.Error("the image flags lack --ca-certs or --lucid")
	}
}
