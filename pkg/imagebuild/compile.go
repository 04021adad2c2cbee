package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// CompileOptions say how to build the lucid binary for one platform.
type CompileOptions struct {
	// SourceDir is the root of Lucid's module.
	SourceDir string
	Platform  v1.Platform
	// Out is the binary to write.
	Out string
	// Version and Commit are stamped into pkg/buildinfo.
	Version, Commit string
	// Epoch, when set, is SOURCE_DATE_EPOCH for the build.
	Epoch time.Time
}

// Compile cross-compiles lucid: CGO off, -trimpath, no build id or VCS
// stamp, version and commit set by the linker, so the same source and Go
// toolchain give the same bytes.
func Compile(ctx context.Context, o CompileOptions) error {
	goarch, goarm, err := goArch(o.Platform)
	if err != nil {
		return err
	}
	// No -s: the symbol table is how ReadBinary finds the version of a
	// ready binary given to --lucid (a -trimpath build records no
	// -ldflags); it costs about 280 KB of a compressed layer.
	ldflags := "-w -buildid= " +
		"-X github.com/pickme/lucid/pkg/buildinfo.Version=" + o.Version + " " +
		"-X github.com/pickme/lucid/pkg/buildinfo.Commit=" + o.Commit
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", o.Out, "./cmd/lucid")
	cmd.Dir = o.SourceDir
	// Microarchitecture levels and experiments are pinned, so the caller's
	// environment does not change the bytes (the Go toolchain still does).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+o.Platform.OS, "GOARCH="+goarch, "GOFLAGS=-mod=readonly",
		"GOAMD64=v1", "GOARM64=v8.0", "GOEXPERIMENT=")
	if goarm != "" {
		cmd.Env = append(cmd.Env, "GOARM="+goarm)
	}
	if !o.Epoch.IsZero() {
		cmd.Env = append(cmd.Env, "SOURCE_DATE_EPOCH="+strconv.FormatInt(o.Epoch.Unix(), 10))
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build for %s: %w\n%s", o.Platform, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// goArch maps an image platform to GOARCH (and GOARM for arm/v6, arm/v7).
func goArch(p v1.Platform) (arch, arm string, err error) {
	if p.OS != "linux" {
		return "", "", fmt.Errorf("platform %s: images are linux only", p)
	}
	switch p.Architecture {
	case "amd64", "arm64", "riscv64", "ppc64le", "s390x", "386":
		return p.Architecture, "", nil
	case "arm":
		switch p.Variant {
		case "v6":
			return "arm", "6", nil
		case "v7", "":
			return "arm", "7", nil
		}
	}
	return "", "", fmt.Errorf("platform %s is not supported", p)
}

// ParsePlatforms reads platform names such as linux/arm64 or linux/arm/v7.
func ParsePlatforms(names []string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, n := range names {
		p, err := v1.ParsePlatform(strings.TrimSpace(n))
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want os/arch[/variant], such as linux/arm64", n)
		}
		out = append(out, *p)
	}
	if len(out) == 0 {
		return nil, errors.New("no platform to build")
	}
	return out, nil
}

// CompileAll compiles lucid from src for each platform, stamped with
// stamp, into dir/<os-arch[-variant]>/lucid, and returns the binaries as
// Options.Binaries wants them. progress, if set, hears of each binary.
func CompileAll(ctx context.Context, src, dir string, platforms []v1.Platform, stamp Stamp, progress func(Event)) (map[string]string, error) {
	binaries := map[string]string{}
	for _, p := range platforms {
		out := filepath.Join(dir, strings.ReplaceAll(p.String(), "/", "-"), "lucid")
		start := time.Now()
		if err := Compile(ctx, CompileOptions{SourceDir: src, Platform: p, Out: out, Version: stamp.Version, Commit: stamp.Commit, Epoch: stamp.Created}); err != nil {
			return nil, err
		}
		if progress != nil {
			fi, err := os.Stat(out)
			if err != nil {
				return nil, err
			}
			progress(Event{Step: "compile", Platform: p.String(), Image: "lucid", Detail: fmt.Sprintf("%.1f MiB in %s", float64(fi.Size())/(1<<20), time.Since(start).Round(10*time.Millisecond))})
		}
		binaries[p.String()] = out
	}
	return binaries, nil
}

// Label sets the OCI labels and creation time of o from the stamp.
func (s Stamp) Label(o *Options) {
	o.Version, o.Revision, o.Source, o.Created = s.Version, s.Commit, s.Source, s.Created
}
