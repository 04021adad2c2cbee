package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// ImageFlags are the flags that decide what is in the images. `lucidctl
// build` and `lucidctl deploy` both take them, so the same flags give the
// same image bytes from either.
type ImageFlags struct {
	Platforms []string
	Base      string
	CACerts   string
	Lucid     string
	SourceDir string
	Version   string
}

// Add registers the flags.
func (f *ImageFlags) Add(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.Platforms, "platform", nil, "platforms to build, os/arch[/variant] (repeatable or comma-separated; default: lucid.yaml's)")
	fs.StringVar(&f.Base, "base", imagebuild.BaseAuto, `base image: auto (distroless if reachable, else scratch), scratch, or a reference`)
	fs.StringVar(&f.CACerts, "ca-certs", "", "PEM bundle the scratch base carries (default: the build host's /etc/ssl/certs/ca-certificates.crt; pin one for digests that do not depend on the host)")
	fs.StringVar(&f.Lucid, "lucid", "", "use this lucid binary instead of compiling one (one platform; its version labels the images)")
	fs.StringVar(&f.SourceDir, "source", "", "Lucid's source tree (default: the one the working directory is in)")
	fs.StringVar(&f.Version, "version", "", "version to stamp (default: git describe, or what the --lucid binary says)")
}

// Spec turns the flags and lucid.yaml into a build; mistakes in the flags
// are usage errors. Progress and the builder are the caller's to set.
func (f *ImageFlags) Spec(cfg *projectconfig.Config, getenv func(string) string) (imagebuild.Spec, error) {
	names := f.Platforms
	if len(names) == 0 {
		names = cfg.Platforms
	}
	platforms, err := imagebuild.ParsePlatforms(names)
	if err != nil {
		return imagebuild.Spec{}, cli.Usage(err)
	}
	s := imagebuild.Spec{
		Platforms: platforms, Base: f.Base, Version: f.Version, Getenv: getenv,
		ImageName: cfg.Images.Name, Tag: cfg.Images.Tag,
		WorkDir: filepath.Join(cfg.Abs(cfg.Local.StateDir), "build"),
	}
	if f.CACerts != "" {
		if s.CACerts, err = os.ReadFile(f.CACerts); err != nil {
			return imagebuild.Spec{}, cli.Usage(fmt.Errorf("--ca-certs: %w", err))
		}
	}
	if f.Lucid != "" {
		if len(platforms) != 1 {
			return imagebuild.Spec{}, cli.Usage(errors.New("--lucid is one binary: give exactly one --platform"))
		}
		if _, err := os.Stat(f.Lucid); err != nil {
			return imagebuild.Spec{}, cli.Usage(fmt.Errorf("--lucid: %w", err))
		}
		s.Binaries = map[string]string{platforms[0].String(): f.Lucid}
		return s, nil
	}
	if s.SourceDir = f.SourceDir; s.SourceDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return imagebuild.Spec{}, err
		}
		if s.SourceDir = cli.SourceRoot(wd); s.SourceDir == "" {
			return imagebuild.Spec{}, cli.WithHint(errors.New("not in Lucid's source tree, and no --lucid binary"), "run from a checkout, or pass --source DIR or --lucid FILE")
		}
	}
	return s, nil
}
