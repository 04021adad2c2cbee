package imagebuild

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.Tool(t, "docker", ""), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// dockerReady skips (or fails in CI) when the Docker Engine does not answer.
func dockerReady(t *testing.T) {
	bin := testenv.Tool(t, "docker", "")
	if err := exec.Command(bin, "version").Run(); err != nil {
		testenv.Missing(t, "a running Docker Engine")
	}
}

func removeImages(t *testing.T, name, tag string) {
	t.Cleanup(func() {
		for _, s := range catalog.Services {
			_ = exec.Command("docker", "rmi", "-f", deployfiles.Image(name, tag, s)).Run()
		}
	})
}

// runsAndAnswers starts the engine image and waits for /health through a
// published port, and runs the healthcheck entrypoint inside it.
func runsAndAnswers(t *testing.T, image string) {
	t.Helper()
	port := testenv.FreePort(t)
	name := fmt.Sprintf("lucid-imagebuild-test-%d", port)
	// As compose runs it: read-only, no capabilities, a fresh volume on the
	// data directory (which takes the image directory's nonroot owner).
	docker(t, "run", "-d", "--name", name, "--read-only", "--cap-drop", "ALL", "-v", deployfiles.DataRoot+"/engine",
		"-e", service.EnvServiceKey+"="+servicetest.Key, "-p", fmt.Sprintf("127.0.0.1:%d:8084", port), image)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("docker", "logs", name).CombinedOutput()
			t.Logf("container log:\n%s", out)
		}
		_ = exec.Command("docker", "rm", "-f", "-v", name).Run()
	})
	testenv.Eventually(t, 30*time.Second, "the engine container answers /health", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	docker(t, "exec", name, deployfiles.Binary, "engine", "healthcheck")
	if user := docker(t, "exec", name, deployfiles.Binary, "version"); !strings.Contains(user, "linux/amd64") {
		t.Errorf("version inside the container: %q", user)
	}
}

// TestDockerLoadsTheTarball: the daemonless builder's amd64 tarball loads
// into the real Docker Engine, every image's entrypoint runs, and the
// engine image serves /health as nonroot on a read-only root filesystem.
func TestDockerLoadsTheTarball(t *testing.T) {
	dockerReady(t)
	ctx := context.Background()
	tag := fmt.Sprintf("test-%d", os.Getpid())
	o := testOptions(t, "lucid-test/{service}", testPlatforms[0])
	o.Tag, o.CACerts = tag, nil // the host's bundle, as a real build
	built, err := Assemble(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "images.tar")
	if err := WriteTarball(ctx, file, built); err != nil {
		t.Fatal(err)
	}
	removeImages(t, "lucid-test/{service}", tag)
	out := docker(t, "load", "-i", file)
	for _, s := range catalog.Services {
		ref := deployfiles.Image("lucid-test/{service}", tag, s)
		if !strings.Contains(out, ref) {
			t.Errorf("docker load did not load %s:\n%s", ref, out)
		}
		// The entrypoint is `lucid <service>`; --help proves it runs.
		if help := docker(t, "run", "--rm", ref, "--help"); !strings.Contains(help, s.Name) {
			t.Errorf("%s --help: %q", ref, help)
		}
	}
	engine, _ := catalog.Lookup("engine")
	runsAndAnswers(t, deployfiles.Image("lucid-test/{service}", tag, engine))
}

// TestDockerBuilderMakesTheSameImages builds through the Docker Engine API
// and checks the result against the daemonless builder's configs.
func TestDockerBuilderMakesTheSameImages(t *testing.T) {
	dockerReady(t)
	ctx := context.Background()
	tag := fmt.Sprintf("dockertest-%d", os.Getpid())
	o := testOptions(t, "lucid-test/{service}", testPlatforms[0])
	o.Tag = tag
	removeImages(t, "lucid-test/{service}", tag)
	rows, err := BuildWithDocker(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(catalog.Services) {
		t.Fatalf("%d images, want %d", len(rows), len(catalog.Services))
	}
	built, err := Assemble(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range catalog.Services {
		ref := deployfiles.Image("lucid-test/{service}", tag, s)
		got := docker(t, "image", "inspect", ref, "--format",
			`{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Healthcheck.Test}}|{{index .Config.Labels "io.lucid.service"}}|{{index .Config.Labels "org.opencontainers.image.version"}}|{{index .Config.Labels "org.opencontainers.image.description"}}|{{.Os}}/{{.Architecture}}`)
		cf, _ := built[i].Images[0].Image.ConfigFile()
		c := cf.Config
		want := fmt.Sprintf("%s|%s|%s|%s|%s|%s|%s/%s", c.User, jsonList(c.Entrypoint), jsonList(c.Healthcheck.Test), c.Labels["io.lucid.service"], c.Labels["org.opencontainers.image.version"], c.Labels["org.opencontainers.image.description"], cf.OS, cf.Architecture)
		if got != want {
			t.Errorf("%s through docker:\n got %s\nwant %s", ref, got, want)
		}
	}
	engine, _ := catalog.Lookup("engine")
	runsAndAnswers(t, deployfiles.Image("lucid-test/{service}", tag, engine))
}

func jsonList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ",") + "]"
}

// TestArm64BinaryRuns executes the arm64 build under qemu user emulation.
func TestArm64BinaryRuns(t *testing.T) {
	qemu := testenv.Tool(t, "qemu-aarch64-static", "")
	out, err := exec.Command(qemu, lucidBinaries(t)["linux/arm64"], "version").CombinedOutput()
	if err != nil {
		t.Fatalf("arm64 lucid under qemu: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "v0.0.0-test") || !strings.Contains(string(out), "linux/arm64") {
		t.Fatalf("arm64 lucid version: %q", out)
	}
}
