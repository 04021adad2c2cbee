package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"

	dockerfiles "github.com/pickme/lucid/Dockerfiles"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// ErrDockerPlatforms refuses a multi-platform build through the Docker
// Engine, which stores one platform per tag.
var ErrDockerPlatforms = errors.New("the docker builder makes one platform at a time; use the default builder for several")

// BuildWithDocker builds the same six images through the Docker Engine
// API, from Dockerfiles/Dockerfile and a context holding the binary and
// the base files: nothing is pulled, nothing compiled in a container.
func BuildWithDocker(ctx context.Context, o Options) ([]Row, error) {
	if len(o.Platforms) != 1 {
		return nil, ErrDockerPlatforms
	}
	if o.Base != "" && o.Base != BaseAuto && o.Base != BaseScratch {
		return nil, errors.New("the docker builder builds on scratch only; --base is for the default builder")
	}
	p := o.Platforms[0]
	bin, ok := o.Binaries[p.String()]
	if !ok {
		return nil, fmt.Errorf("no lucid binary for %s", p)
	}
	if o.Progress == nil {
		o.Progress = func(Event) {}
	}
	buildCtx, err := o.dockerContext(bin)
	if err != nil {
		return nil, err
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	// Close only drops the client's idle connections; the builds' results
	// were checked.
	defer func() { _ = cli.Close() }()

	var rows []Row
	for _, s := range catalog.Services {
		ref := deployfiles.Image(o.ImageName, o.Tag, s)
		resp, err := cli.ImageBuild(ctx, bytes.NewReader(buildCtx), build.ImageBuildOptions{
			Tags: []string{ref}, Dockerfile: "Dockerfile", Target: s.Name, Platform: p.String(),
			Remove: true, ForceRemove: true, Version: build.BuilderV1, BuildArgs: o.buildArgs(),
		})
		if err != nil {
			return nil, fmt.Errorf("docker build %s: %w", ref, err)
		}
		err = o.followBuild(resp.Body, ref, p.String())
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("docker build %s: %w", ref, err)
		}
		inspect, err := cli.ImageInspect(ctx, ref)
		if err != nil {
			return nil, fmt.Errorf("docker image inspect %s: %w", ref, err)
		}
		rows = append(rows, Row{Image: ref, Platform: p.String(), ID: inspect.ID, Size: inspect.Size})
		o.Progress(Event{Image: ref, Platform: p.String(), Step: "image", Detail: short12(inspect.ID)})
	}
	return rows, nil
}

// followBuild reads the daemon's JSON progress stream (with the docker
// library's reader), passing the Dockerfile steps on, and returns the
// build's error, if any.
func (o Options) followBuild(body io.Reader, ref, platform string) error {
	steps := lineWriter(func(line string) {
		if line = strings.TrimSpace(line); strings.HasPrefix(line, "Step ") {
			o.Progress(Event{Image: ref, Platform: platform, Step: "docker", Detail: line})
		}
	})
	return jsonmessage.DisplayJSONMessagesStream(body, steps, 0, false, nil)
}

// lineWriter calls its function with each line written to it.
type lineWriter func(string)

func (f lineWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(string(p), "\n") {
		if line != "" {
			f(line)
		}
	}
	return len(p), nil
}

// dockerContext is the build context: the Dockerfile, the binary, rootfs/
// and data/.
func (o Options) dockerContext(binary string) ([]byte, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("lucid binary: %w", err)
	}
	certs := o.CACerts
	if certs == nil {
		if certs, err = os.ReadFile(caBundle); err != nil {
			return nil, fmt.Errorf("CA certificates (%s): %w", caBundle, err)
		}
	}
	entries := []tarEntry{
		{name: "Dockerfile", mode: 0o644, data: dockerfiles.Dockerfile},
		{name: "lucid", mode: 0o755, data: data},
		{name: "rootfs", dir: true, mode: 0o755},
	}
	for _, e := range baseEntries("", certs) {
		// The Dockerfile copies home/ with the nonroot owner, the rest as root.
		if e.name == "home" || strings.HasPrefix(e.name, "home/") {
			e.name = path.Join("homes", strings.TrimPrefix(strings.TrimPrefix(e.name, "home"), "/"))
		} else {
			e.name = path.Join("rootfs", e.name)
		}
		entries = append(entries, e)
	}
	entries = append(entries, tarEntry{name: "data", dir: true, mode: 0o755})
	for _, s := range catalog.Services {
		entries = append(entries, tarEntry{name: "data/" + s.Name, dir: true, mode: 0o700})
	}
	return tarOf(entries, o.created())
}

func short12(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// buildArgs fill the Dockerfile's labels, as the daemonless builder sets
// them (the description stays with that builder: it is no build arg).
func (o Options) buildArgs() map[string]*string {
	args := map[string]*string{}
	for k, v := range map[string]string{"VERSION": o.Version, "REVISION": o.Revision, "CREATED": o.created().Format(time.RFC3339), "SOURCE": o.Source} {
		if v != "" {
			args[k] = &v
		}
	}
	return args
}
