package imagebuild

import (
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Spec is one image build, whole: the same Spec (and source, and Go
// toolchain) gives the same images, whichever command asks for it.
type Spec struct {
	// Platforms to build, in order.
	Platforms []v1.Platform
	// Binaries are ready lucid binaries by platform ("linux/arm64"). When
	// set, nothing is compiled and the stamp is read from the binaries.
	Binaries map[string]string
	// SourceDir is Lucid's source tree, compiled when Binaries is empty.
	SourceDir string
	// WorkDir receives the compiled binaries.
	WorkDir string
	// Version, when set, is the version to stamp instead of git's. With
	// Binaries it labels a binary that does not say its version, and must
	// agree with one that does.
	Version string
	// Getenv reads SOURCE_DATE_EPOCH; nil reads nothing.
	Getenv func(string) string
	// Base is BaseAuto (the default), BaseScratch or an image reference.
	Base string
	// CACerts is the bundle the scratch base carries (default: the host's).
	CACerts []byte
	// ImageName ("{service}" is replaced) and Tag name the images.
	ImageName, Tag string
	// Builder assembles the images; nil means Daemonless.
	Builder Builder
	// Progress, if set, hears about each step.
	Progress func(Event)
}

// A Builder makes the six images out of lucid binaries that exist.
type Builder interface {
	Assemble(ctx context.Context, o Options) (Result, error)
}

// Result is what a build made.
type Result struct {
	// Stamp is what the images are labelled with.
	Stamp Stamp
	// Images are the images themselves, to write, push or send; nil when
	// the Docker Engine keeps them.
	Images []Built
	// Rows summarise every image (and index).
	Rows []Row
}

// Daemonless assembles the images in memory with go-containerregistry; no
// daemon is needed, and the result can be written, pushed or sent.
type Daemonless struct{}

// Assemble implements Builder.
func (Daemonless) Assemble(ctx context.Context, o Options) (Result, error) {
	built, err := Assemble(ctx, o)
	if err != nil {
		return Result{}, err
	}
	rows, err := Summary(built)
	if err != nil {
		return Result{}, err
	}
	return Result{Images: built, Rows: rows}, nil
}

// DockerEngine builds the images through the Docker Engine API from
// Dockerfiles/, one platform at a time; they stay in the Engine.
type DockerEngine struct{}

// Assemble implements Builder.
func (DockerEngine) Assemble(ctx context.Context, o Options) (Result, error) {
	rows, err := BuildWithDocker(ctx, o)
	if err != nil {
		return Result{}, err
	}
	return Result{Rows: rows}, nil
}

// Build runs the whole pipeline: the stamp (from git, or read from the
// ready binaries), the binaries (compiled, or checked to be lucid for each
// platform), the labels, and the images.
func Build(ctx context.Context, s Spec) (Result, error) {
	if len(s.Platforms) == 0 {
		return Result{}, errors.New("no platform to build")
	}
	getenv := s.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	builder := s.Builder
	if builder == nil {
		builder = Daemonless{}
	}
	var stamp Stamp
	binaries := s.Binaries
	if len(binaries) > 0 {
		var err error
		if stamp, err = stampOfBinaries(s.Platforms, binaries, s.Version); err != nil {
			return Result{}, err
		}
		if t, ok := sourceDateEpoch(getenv); ok {
			stamp.Created = t
		}
	} else {
		if s.SourceDir == "" {
			return Result{}, errors.New("no lucid binaries and no source tree to compile them from")
		}
		stamp = ReadStamp(ctx, s.SourceDir, getenv)
		if s.Version != "" {
			stamp.Version = s.Version
		}
		var err error
		if binaries, err = CompileAll(ctx, s.SourceDir, s.WorkDir, s.Platforms, stamp, s.Progress); err != nil {
			return Result{}, err
		}
	}
	o := Options{
		Binaries: binaries, Platforms: s.Platforms, Base: s.Base, CACerts: s.CACerts,
		ImageName: s.ImageName, Tag: s.Tag, Progress: s.Progress,
	}
	stamp.Label(&o)
	res, err := builder.Assemble(ctx, o)
	if err != nil {
		return Result{}, err
	}
	res.Stamp = stamp
	return res, nil
}

// stampOfBinaries checks that each platform has a lucid binary built for
// it and returns their common stamp; version labels a binary that does
// not say its own.
func stampOfBinaries(platforms []v1.Platform, binaries map[string]string, version string) (Stamp, error) {
	var stamp Stamp
	for i, p := range platforms {
		file, ok := binaries[p.String()]
		if !ok {
			return Stamp{}, fmt.Errorf("no lucid binary for %s", p)
		}
		b, err := ReadBinary(file)
		if err != nil {
			return Stamp{}, err
		}
		if err := b.runsOn(p); err != nil {
			return Stamp{}, fmt.Errorf("%s: %w", file, err)
		}
		switch {
		case b.Stamp.Version == "" && version != "":
			b.Stamp.Version = version
		case b.Stamp.Version == "":
			b.Stamp.Version = "dev"
		case version != "" && version != b.Stamp.Version:
			return Stamp{}, fmt.Errorf("%s is version %s, not %s", file, b.Stamp.Version, version)
		}
		if i > 0 && (b.Stamp.Version != stamp.Version || b.Stamp.Commit != stamp.Commit) {
			return Stamp{}, fmt.Errorf("the binaries are of different builds: %s (%s) and %s (%s)", stamp.Version, stamp.Commit, b.Stamp.Version, b.Stamp.Commit)
		}
		stamp = b.Stamp
	}
	return stamp, nil
}
