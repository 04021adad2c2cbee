package imagebuild

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	dockerfiles "github.com/pickme/lucid/Dockerfiles"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

var (
	compileOnce sync.Once
	binaries    map[string]string
	compileErr  error
)

var testPlatforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// lucidBinaries cross-compiles lucid once for the tests' platforms.
func lucidBinaries(t *testing.T) map[string]string {
	t.Helper()
	compileOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lucid-imagebuild-")
		if err != nil {
			compileErr = err
			return
		}
		binaries = map[string]string{}
		for _, p := range testPlatforms {
			out := filepath.Join(dir, "lucid-"+p.Architecture)
			if compileErr = Compile(context.Background(), CompileOptions{SourceDir: "../..", Platform: p, Out: out, Version: "v0.0.0-test", Commit: "testcommit", Epoch: time.Unix(1700000000, 0)}); compileErr != nil {
				return
			}
			binaries[p.String()] = out
		}
	})
	if compileErr != nil {
		t.Fatal(compileErr)
	}
	return binaries
}

func testOptions(t *testing.T, imageName string, platforms ...v1.Platform) Options {
	return Options{
		Binaries: lucidBinaries(t), Platforms: platforms, Base: BaseScratch,
		CACerts:   []byte("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n"),
		ImageName: imageName, Tag: "v1", Version: "v0.0.0-test", Revision: "testcommit",
		Source: "https://example.invalid/lucid", Created: time.Unix(1700000000, 0),
	}
}

// TestPushAndReadBack pushes both platforms to an in-process registry and
// reads them back: an index per service with both platforms, the right
// entrypoint, user, labels and healthcheck, and one binary layer whose
// digest every service shares.
func TestPushAndReadBack(t *testing.T) {
	ctx := context.Background()
	reg := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")

	built, err := Assemble(ctx, testOptions(t, host+"/lucid-{service}", testPlatforms...))
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(ctx, built, true); err != nil {
		t.Fatal(err)
	}

	sharedLayer := map[string]map[string]bool{} // platform → digests of the binary layer
	for _, s := range catalog.Services {
		ref, _ := name.NewTag(deployfiles.Image(host+"/lucid-{service}", "v1", s), name.Insecure)
		idx, err := remote.Index(ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		im, _ := idx.IndexManifest()
		var plats []string
		for _, m := range im.Manifests {
			plats = append(plats, m.Platform.String())
		}
		if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("%s platforms %v", ref, plats)
		}
		for _, p := range testPlatforms {
			img, err := remote.Image(ref, remote.WithPlatform(p))
			if err != nil {
				t.Fatal(err)
			}
			cf, _ := img.ConfigFile()
			c := cf.Config
			if cf.Architecture != p.Architecture || cf.OS != "linux" {
				t.Errorf("%s %s: config platform %s/%s", ref, p, cf.OS, cf.Architecture)
			}
			if !slices.Equal(c.Entrypoint, []string{deployfiles.Binary, s.Name}) || c.User != deployfiles.User {
				t.Errorf("%s: entrypoint %v user %q", ref, c.Entrypoint, c.User)
			}
			if c.Labels["org.opencontainers.image.version"] != "v0.0.0-test" || c.Labels["org.opencontainers.image.title"] != s.Container || c.Labels["io.lucid.service"] != s.Name {
				t.Errorf("%s: labels %v", ref, c.Labels)
			}
			if c.Healthcheck == nil || !slices.Equal(c.Healthcheck.Test, []string{"CMD", deployfiles.Binary, s.Name, "healthcheck"}) {
				t.Errorf("%s: healthcheck %+v", ref, c.Healthcheck)
			}
			layers, _ := img.Layers()
			if len(layers) != 2 {
				t.Fatalf("%s: %d layers, want base and binary", ref, len(layers))
			}
			d, _ := layers[1].Digest()
			if sharedLayer[p.String()] == nil {
				sharedLayer[p.String()] = map[string]bool{}
			}
			sharedLayer[p.String()][d.String()] = true
		}
	}
	for p, digests := range sharedLayer {
		if len(digests) != 1 {
			t.Errorf("%s: the six images have %d different binary layers, want one shared", p, len(digests))
		}
	}
}

// TestReproducible: the same binary and options give the same digests,
// and a label change builds a new config only.
func TestReproducible(t *testing.T) {
	ctx := context.Background()
	amd := testPlatforms[0]
	digests := func(o Options) []string {
		built, err := Assemble(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := Summary(built)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rows {
			out = append(out, r.Digest)
		}
		return out
	}
	o := testOptions(t, "example.invalid/lucid-{service}", amd)
	a, b := digests(o), digests(o)
	if !slices.Equal(a, b) {
		t.Fatalf("two builds differ:\n%v\n%v", a, b)
	}
	o.Version = "v0.0.1-test"
	if c := digests(o); slices.Equal(a, c) {
		t.Fatal("a new version label did not change the images")
	}

	// The binary itself is reproducible.
	bin := lucidBinaries(t)[amd.String()]
	again := filepath.Join(t.TempDir(), "lucid")
	if err := Compile(ctx, CompileOptions{SourceDir: "../..", Platform: amd, Out: again, Version: "v0.0.0-test", Commit: "testcommit", Epoch: time.Unix(1700000000, 0)}); err != nil {
		t.Fatal(err)
	}
	if sum(t, bin) != sum(t, again) {
		t.Fatal("compiling twice gave different binaries")
	}
}

func TestLayoutAndTarball(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	built, err := Assemble(ctx, testOptions(t, "example.invalid/lucid-{service}", testPlatforms...))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLayout(ctx, filepath.Join(dir, "oci"), built); err != nil {
		t.Fatal(err)
	}
	// Writing again replaces rather than duplicates.
	if err := WriteLayout(ctx, filepath.Join(dir, "oci"), built); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(filepath.Join(dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != len(catalog.Services) {
		t.Errorf("layout has %d entries, want %d", len(im.Manifests), len(catalog.Services))
	}
	if err := WriteTarball(ctx, filepath.Join(dir, "images.tar"), built); !errors.Is(err, ErrTarballPlatforms) {
		t.Errorf("a two-platform tarball: %v, want ErrTarballPlatforms", err)
	}
}

func sum(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

// TestRegistryBase builds on a base image from a registry: its layers come
// first, ours on top, and the images still push (the base's blobs are
// fetched when written, after the base was resolved).
func TestRegistryBase(t *testing.T) {
	ctx := context.Background()
	reg := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	baseImg, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	amd := testPlatforms[0]
	cf, _ := baseImg.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = amd.OS, amd.Architecture
	baseImg, _ = mutate.ConfigFile(baseImg, cf)
	baseIdx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: baseImg, Descriptor: v1.Descriptor{Platform: &amd}})
	baseRef, _ := name.NewTag(host+"/base:1", name.Insecure)
	if err := remote.WriteIndex(baseRef, baseIdx); err != nil {
		t.Fatal(err)
	}

	o := testOptions(t, host+"/lucid-{service}", amd)
	o.Base = baseRef.String()
	built, err := Assemble(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(ctx, built, true); err != nil {
		t.Fatalf("push on a registry base: %v", err)
	}
	engine, _ := catalog.Lookup("engine")
	ref, _ := name.NewTag(deployfiles.Image(host+"/lucid-{service}", "v1", engine), name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	if len(layers) != 3 {
		t.Fatalf("%d layers, want the base's two and ours", len(layers))
	}
	mt, _ := img.MediaType()
	baseMT, _ := baseImg.MediaType()
	if mt != baseMT {
		t.Errorf("manifest media type %s, base's %s", mt, baseMT)
	}
	lmt, _ := layers[2].MediaType()
	blmt, _ := layers[0].MediaType()
	if lmt != blmt {
		t.Errorf("our layer is %s on a base of %s layers", lmt, blmt)
	}
}

// TestSingleImageBaseMustBeThePlatforms: a base given as one image, not
// an index, is taken whatever the platform asked, so its own platform
// must be the one built; one for another architecture is refused rather
// than relabelled, and one for the platform is taken.
func TestSingleImageBaseMustBeThePlatforms(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	amd, arm := v1.Platform{OS: "linux", Architecture: "amd64"}, v1.Platform{OS: "linux", Architecture: "arm64"}
	baseImg, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := baseImg.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = amd.OS, amd.Architecture
	baseImg, _ = mutate.ConfigFile(baseImg, cf)
	baseRef, _ := name.NewTag(host+"/amd64only:1", name.Insecure)
	if err := remote.Write(baseRef, baseImg); err != nil { // a manifest, no index
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p  v1.Platform
		ok bool
	}{{arm, false}, {amd, true}} {
		o := testOptions(t, host+"/lucid-{service}", tc.p)
		o.Base = baseRef.String()
		_, err := Assemble(context.Background(), o)
		if tc.ok && err != nil {
			t.Errorf("an amd64 base for amd64: %v", err)
		}
		if !tc.ok && (err == nil || !strings.Contains(err.Error(), "is for linux/amd64, not linux/arm64")) {
			t.Errorf("an amd64 base for arm64: %v, want it refused", err)
		}
	}
}

// TestDockerfileMatchesCatalog keeps Dockerfiles/Dockerfile's targets in
// step with the catalog: one per service, with its port, title and
// description.
func TestDockerfileMatchesCatalog(t *testing.T) {
	// Each service's stage, from its FROM line to the next one: a line in
	// the wrong stage is as wrong as a missing one.
	stages := map[string]string{}
	for _, part := range strings.Split(string(dockerfiles.Dockerfile), "\nFROM ")[1:] {
		header, body, _ := strings.Cut(part, "\n")
		if name, ok := strings.CutPrefix(header, "base AS "); ok {
			stages[name] = body
		}
	}
	if len(stages) != len(catalog.Services) {
		t.Errorf("Dockerfile has %d service stages, the catalog %d services", len(stages), len(catalog.Services))
	}
	for _, s := range catalog.Services {
		stage, ok := stages[s.Name]
		if !ok {
			t.Errorf("Dockerfile has no stage %q", s.Name)
			continue
		}
		for _, want := range []string{
			"ENV LUCID_DATA_DIR=" + deployfiles.DataRoot + "/" + s.Name + "\n",
			fmt.Sprintf("EXPOSE %d/tcp\n", s.Port),
			"org.opencontainers.image.title=" + s.Container + " io.lucid.service=" + s.Name + " ",
			fmt.Sprintf("org.opencontainers.image.description=%q", s.Summary),
			fmt.Sprintf(`CMD [%q, %q, "healthcheck"]`, deployfiles.Binary, s.Name),
			fmt.Sprintf(`ENTRYPOINT [%q, %q]`, deployfiles.Binary, s.Name),
		} {
			if !strings.Contains(stage, want) {
				t.Errorf("stage %s lacks %q", s.Name, want)
			}
		}
	}
}
