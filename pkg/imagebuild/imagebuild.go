// Package imagebuild makes the six Lucid service images. Build runs the
// whole pipeline from a Spec (stamp, compile or take ready binaries,
// label, assemble), so every command that makes images makes the same
// ones; a Builder does the assembling, Daemonless or DockerEngine.
//
// Daemonless assembles without a Docker daemon, with go-containerregistry:
// a base (a distroless static image when a registry has one, else scratch
// plus CA certificates and a nonroot user), one layer holding the lucid
// binary and the services' data directories that all six images share, and
// per service only a config: entrypoint `lucid <service>`, user,
// healthcheck, OCI labels. Several platforms make a multi-platform index
// per image.
//
// Everything is deterministic: tar entries carry SOURCE_DATE_EPOCH (or the
// zero time), so the same binary gives the same digests.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// Base images.
const (
	// BaseAuto tries DistrolessBase and falls back to scratch.
	BaseAuto = "auto"
	// BaseScratch is scratch plus CA certificates and a nonroot user.
	BaseScratch = "scratch"
	// DistrolessBase is the default base when a registry can be reached.
	DistrolessBase = "gcr.io/distroless/static-debian12:nonroot"
)

// nonroot is the user of every image, as in distroless.
const (
	nonrootUID = 65532
	caBundle   = "/etc/ssl/certs/ca-certificates.crt"
)

// Options say what to assemble.
type Options struct {
	// Binaries maps each platform ("linux/arm64") to its lucid binary.
	Binaries map[string]string
	// Platforms in order; each must have a binary.
	Platforms []v1.Platform
	// Base is BaseAuto, BaseScratch or an image reference.
	Base string
	// CACerts is the bundle the scratch base carries (default: the host's).
	CACerts []byte
	// ImageName ("{service}" is replaced) and Tag name the images.
	ImageName, Tag string
	// Version, Revision and Source go into the OCI labels.
	Version, Revision, Source string
	// Created is SOURCE_DATE_EPOCH; zero means the Unix epoch.
	Created time.Time
	// Progress, if set, hears about each step.
	Progress func(Event)
}

// Event is one step of a build, for progress output.
type Event struct {
	Image    string
	Platform string
	Step     string
	Detail   string
}

// Built is one service's image: one per platform, and an index over them
// when there are several.
type Built struct {
	Service string
	Ref     string
	Images  []PlatformImage
	Index   v1.ImageIndex // nil with a single platform
}

// PlatformImage is the image for one platform.
type PlatformImage struct {
	Platform v1.Platform
	Image    v1.Image
}

// Assemble builds the six images.
func Assemble(ctx context.Context, o Options) ([]Built, error) {
	if o.Progress == nil {
		o.Progress = func(Event) {}
	}
	if o.Base == "" {
		o.Base = BaseAuto
	}
	type perPlatform struct {
		base   v1.Image
		layers []mutate.Addendum
	}
	baseRef, err := o.resolveBase(ctx)
	if err != nil {
		return nil, err
	}
	pp := map[string]perPlatform{}
	for _, p := range o.Platforms {
		bin, ok := o.Binaries[p.String()]
		if !ok {
			return nil, fmt.Errorf("no lucid binary for %s", p)
		}
		// layers starts as the base's own (o.base makes a new slice per
		// call), and the lucid layer goes on top.
		base, layers, err := o.base(ctx, baseRef, p)
		if err != nil {
			return nil, err
		}
		// Our layer takes the base's media types, so a manifest never mixes
		// Docker and OCI descriptors.
		layerType := types.OCILayer
		if mt, err := base.MediaType(); err == nil && mt == types.DockerManifestSchema2 {
			layerType = types.DockerLayer
		}
		lucid, err := lucidLayer(bin, o.created(), layerType)
		if err != nil {
			return nil, err
		}
		digest, err := lucid.Digest()
		if err != nil {
			return nil, err
		}
		size, _ := lucid.Size()
		o.Progress(Event{Image: "lucid layer", Platform: p.String(), Step: "layer", Detail: fmt.Sprintf("%s %s", short(digest), human(size))})
		layers = append(layers, mutate.Addendum{Layer: lucid, History: v1.History{
			Created: v1.Time{Time: o.created()}, CreatedBy: "lucidctl build: lucid binary and data directories",
		}})
		pp[p.String()] = perPlatform{base, layers}
	}

	var out []Built
	for _, s := range catalog.Services {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		b := Built{Service: s.Name, Ref: deployfiles.Image(o.ImageName, o.Tag, s)}
		if _, err := name.ParseReference(b.Ref); err != nil {
			return nil, fmt.Errorf("image name %q: %w", b.Ref, err)
		}
		for _, p := range o.Platforms {
			img, err := o.serviceImage(s, p, pp[p.String()].base, pp[p.String()].layers)
			if err != nil {
				return nil, fmt.Errorf("%s for %s: %w", b.Ref, p, err)
			}
			b.Images = append(b.Images, PlatformImage{Platform: p, Image: img})
			d, _ := img.Digest()
			o.Progress(Event{Image: b.Ref, Platform: p.String(), Step: "image", Detail: short(d)})
		}
		if len(b.Images) > 1 {
			idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
			for _, pi := range b.Images {
				p := pi.Platform
				idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: pi.Image, Descriptor: v1.Descriptor{Platform: &p}})
			}
			b.Index = idx
		}
		out = append(out, b)
	}
	return out, nil
}

func (o Options) created() time.Time {
	if o.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return o.Created.UTC()
}

// resolveBase picks the base once for every platform, so a build never
// mixes bases: "" means scratch. With BaseAuto, distroless is used when its
// registry answers a quick check, else scratch.
func (o Options) resolveBase(ctx context.Context) (string, error) {
	switch o.Base {
	case BaseScratch:
		return "", nil
	case BaseAuto:
		r, err := name.ParseReference(DistrolessBase)
		if err != nil {
			return "", err
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := remote.Head(r, remote.WithContext(hctx)); err != nil {
			o.Progress(Event{Image: "base", Step: "base", Detail: "scratch (" + DistrolessBase + " unreachable)"})
			return "", nil
		}
		return DistrolessBase, nil
	default:
		return o.Base, nil
	}
}

// base returns the base image for p and the layers to add for it.
func (o Options) base(ctx context.Context, ref string, p v1.Platform) (v1.Image, []mutate.Addendum, error) {
	if ref != "" {
		r, err := name.ParseReference(ref)
		if err != nil {
			return nil, nil, fmt.Errorf("base image %q: %w", ref, err)
		}
		// The context stays live: layers are fetched later, when written.
		img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(p))
		if err != nil {
			return nil, nil, fmt.Errorf("base image %s for %s: %w", ref, p, err)
		}
		// A reference to a single image, not an index, is taken whatever
		// the platform asked: its own must be it, or the image would say
		// arm64 over another architecture's files.
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, nil, fmt.Errorf("base image %s for %s: %w", ref, p, err)
		}
		if cf.OS != p.OS || cf.Architecture != p.Architecture || (cf.Variant != "" && p.Variant != "" && cf.Variant != p.Variant) {
			got := v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}
			return nil, nil, fmt.Errorf("base image %s is for %s, not %s: give an index (a multi-platform tag) or an image for %s", ref, got.String(), p, p)
		}
		d, _ := img.Digest()
		o.Progress(Event{Image: "base", Platform: p.String(), Step: "base", Detail: ref + "@" + d.String()})
		return img, nil, nil
	}
	certs := o.CACerts
	if certs == nil {
		var err error
		if certs, err = os.ReadFile(caBundle); err != nil {
			return nil, nil, fmt.Errorf("CA certificates for the scratch base: %w (give a PEM bundle with --ca-certs)", err)
		}
	}
	layer, err := baseLayer(certs, o.created())
	if err != nil {
		return nil, nil, err
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	return img, []mutate.Addendum{{Layer: layer, History: v1.History{
		Created: v1.Time{Time: o.created()}, CreatedBy: "lucidctl build: CA certificates and the nonroot user",
	}}}, nil
}

func (o Options) serviceImage(s catalog.Service, p v1.Platform, base v1.Image, layers []mutate.Addendum) (v1.Image, error) {
	img, err := mutate.Append(base, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: o.created()}
	cf.Author = "lucidctl build"
	c := &cf.Config
	c.Entrypoint = []string{deployfiles.Binary, s.Name}
	c.Cmd = nil
	c.User = deployfiles.User
	c.WorkingDir = "/"
	c.Env = mergeEnv(c.Env, "PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE="+caBundle, "LUCID_DATA_DIR="+path.Join(deployfiles.DataRoot, s.Name))
	c.ExposedPorts = map[string]struct{}{strconv.Itoa(s.Port) + "/tcp": {}}
	c.Healthcheck = &v1.HealthConfig{
		Test:     []string{"CMD", deployfiles.Binary, s.Name, "healthcheck"},
		Interval: 10 * time.Second, Timeout: 3 * time.Second, StartPeriod: 15 * time.Second, Retries: 3,
	}
	c.Labels = o.labels(s)
	return mutate.ConfigFile(img, cf)
}

// labels are the OCI labels of s's image (empty values left out).
func (o Options) labels(s catalog.Service) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       s.Container,
		"org.opencontainers.image.description": s.Summary,
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.created":     o.created().Format(time.RFC3339),
		"org.opencontainers.image.source":      o.Source,
		"org.opencontainers.image.vendor":      "Lucid",
		"io.lucid.service":                     s.Name,
	}
	for k, v := range l {
		if v == "" {
			delete(l, k)
		}
	}
	return l
}

// mergeEnv sets each KEY=VALUE in env, replacing an existing KEY.
func mergeEnv(env []string, set ...string) []string {
	out := append([]string{}, env...)
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, e := range out {
			if strings.HasPrefix(e, k+"=") {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// tarEntry is one file or directory of a layer.
type tarEntry struct {
	name     string
	dir      bool
	mode     int64
	uid, gid int
	data     []byte
}

// layerOf writes entries as a deterministic tar and makes a gzip layer of
// it, compressed once.
func layerOf(entries []tarEntry, mtime time.Time, mediaType types.MediaType) (v1.Layer, error) {
	data, err := tarOf(entries, mtime)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(mediaType), tarball.WithCompressedCaching)
}

// tarOf writes entries as a tar with fixed times.
func tarOf(entries []tarEntry, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: mtime, Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, strings.TrimSuffix(e.name, "/")+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !e.dir {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// baseLayer is what distroless would give: CA certificates, passwd and
// group with the nonroot user, its home, and /tmp.
func baseLayer(certs []byte, mtime time.Time) (v1.Layer, error) {
	return layerOf(baseEntries("", certs), mtime, types.OCILayer)
}

// baseEntries are the scratch base's files, under prefix.
func baseEntries(prefix string, certs []byte) []tarEntry {
	passwd := "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group := "root:x:0:\nnonroot:x:65532:\n"
	entries := []tarEntry{
		{name: "etc", dir: true, mode: 0o755},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/ssl", dir: true, mode: 0o755},
		{name: "etc/ssl/certs", dir: true, mode: 0o755},
		{name: strings.TrimPrefix(caBundle, "/"), mode: 0o644, data: certs},
		{name: "home", dir: true, mode: 0o755},
		{name: "home/nonroot", dir: true, mode: 0o700, uid: nonrootUID, gid: nonrootUID},
		{name: "tmp", dir: true, mode: 0o1777},
	}
	for i := range entries {
		entries[i].name = path.Join(prefix, entries[i].name)
	}
	return entries
}

// lucidLayer holds the binary and every service's data directory, owned
// by the nonroot user so a fresh named volume inherits that ownership.
func lucidLayer(binary string, mtime time.Time, mediaType types.MediaType) (v1.Layer, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("lucid binary: %w", err)
	}
	entries := []tarEntry{
		{name: "usr", dir: true, mode: 0o755},
		{name: "usr/local", dir: true, mode: 0o755},
		{name: "usr/local/bin", dir: true, mode: 0o755},
		{name: strings.TrimPrefix(deployfiles.Binary, "/"), mode: 0o755, data: data},
		{name: "var", dir: true, mode: 0o755},
		{name: "var/lib", dir: true, mode: 0o755},
		{name: strings.TrimPrefix(deployfiles.DataRoot, "/"), dir: true, mode: 0o755},
	}
	for _, s := range catalog.Services {
		entries = append(entries, tarEntry{name: path.Join(strings.TrimPrefix(deployfiles.DataRoot, "/"), s.Name), dir: true, mode: 0o700, uid: nonrootUID, gid: nonrootUID})
	}
	return layerOf(entries, mtime, mediaType)
}

func short(h v1.Hash) string {
	s := h.String()
	if len(s) > 19 {
		return s[:19]
	}
	return s
}

func human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
