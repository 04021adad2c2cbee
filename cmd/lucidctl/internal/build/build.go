// Package build implements `lucidctl build`: it cross-compiles lucid and
// assembles the six service images, without a Docker daemon by default or
// through the Docker Engine with --builder docker.
package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/imagebuild"
)

// Builders.
const (
	builderOCI    = "oci"
	builderDocker = "docker"
)

// Options are the inputs of `lucidctl build`.
type Options struct {
	Env       *cli.Env
	Platforms []string
	Builder   string
	Base      string
	CACerts   string
	Tag       string
	Version   string
	Push      bool
	Insecure  bool
	OCIDir    string
	Tarball   string
	SourceDir string
}

// NewCmd returns the build command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Cross-compile lucid and assemble the six service images",
		Long: `Cross-compile lucid (CGO off, -trimpath, version stamped; the same source and
SOURCE_DATE_EPOCH give the same bytes) for each platform (default: lucid.yaml's
platforms, linux/arm64) and assemble the six images named by lucid.yaml.

The default builder needs no Docker daemon: a distroless base when its
registry answers (else scratch with CA certificates and a nonroot user), one
layer with the binary shared by all six images, and a config per service. With
several platforms each image is a multi-platform index. --builder docker
builds the same images through the Docker Engine from Dockerfiles/.

Outputs: --push (credentials from the Docker config), --oci DIR (an OCI image
layout), --tar FILE (for docker load; one platform). Without any, the images
are built and summarised only. Progress goes to stderr, the summary (image,
platform, digest, size) to stdout.`,
		Example: `  lucidctl build --tar dist/lucid-arm64.tar
  lucidctl build --platform linux/arm64,linux/amd64 --push
  lucidctl build --platform linux/amd64 --builder docker`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&opts.Platforms, "platform", nil, "platforms to build, os/arch[/variant] (repeatable or comma-separated; default: lucid.yaml's)")
	f.StringVar(&opts.Builder, "builder", builderOCI, "oci (no daemon) or docker (the Docker Engine API)")
	f.StringVar(&opts.Base, "base", imagebuild.BaseAuto, `base image: auto (distroless if reachable, else scratch), scratch, or a reference`)
	f.StringVar(&opts.CACerts, "ca-certs", "", "PEM bundle the scratch base carries (default: the build host's /etc/ssl/certs/ca-certificates.crt; pin one for digests that do not depend on the host)")
	f.StringVar(&opts.Tag, "tag", "", "image tag (default: images.tag of lucid.yaml)")
	f.StringVar(&opts.Version, "version", "", "version to stamp (default: git describe)")
	f.BoolVar(&opts.Push, "push", false, "push the images to their registries")
	f.BoolVar(&opts.Insecure, "insecure-registry", false, "allow plain HTTP to the registry (with --push)")
	f.StringVar(&opts.OCIDir, "oci", "", "write the images into this OCI image layout directory")
	f.StringVar(&opts.Tarball, "tar", "", "write a tarball that docker load accepts (one platform)")
	f.StringVar(&opts.SourceDir, "source", "", "Lucid's source tree (default: the one the working directory is in)")
	_ = cmd.RegisterFlagCompletionFunc("builder", cobra.FixedCompletions([]string{builderOCI, builderDocker}, cobra.ShellCompDirectiveNoFileComp))
	return cli.SupportsJSON(cmd)
}

// Output is the --json result.
type Output struct {
	Images   []imagebuild.Row `json:"images"`
	Duration float64          `json:"duration_seconds"`
}

func run(ctx context.Context, opts *Options) error {
	start := time.Now()
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	names := opts.Platforms
	if len(names) == 0 {
		names = cfg.Platforms
	}
	platforms, err := imagebuild.ParsePlatforms(names)
	if err != nil {
		return cli.Usage(err)
	}
	switch {
	case opts.Builder != builderOCI && opts.Builder != builderDocker:
		return cli.Usage(fmt.Errorf("--builder %q: use oci or docker", opts.Builder))
	case opts.Builder == builderDocker && opts.Base != imagebuild.BaseAuto && opts.Base != imagebuild.BaseScratch:
		return cli.Usage(errors.New("--builder docker builds on scratch only; --base is for the default builder"))
	case opts.Builder == builderDocker && len(platforms) != 1:
		return cli.Usage(imagebuild.ErrDockerPlatforms)
	case opts.Builder == builderDocker && (opts.OCIDir != "" || opts.Tarball != "" || opts.Push):
		return cli.Usage(errors.New("--builder docker leaves the images in the Docker Engine; --push, --oci and --tar are for the default builder"))
	case opts.Tarball != "" && len(platforms) != 1:
		return cli.Usage(imagebuild.ErrTarballPlatforms)
	}
	src := opts.SourceDir
	if src == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if src = cli.SourceRoot(wd); src == "" {
			return cli.WithHint(errors.New("not in Lucid's source tree"), "run lucidctl build from a checkout, or pass --source DIR")
		}
	}
	tag := opts.Tag
	if tag == "" {
		tag = cfg.Images.Tag
	}
	stamp := imagebuild.ReadStamp(ctx, src, opts.Env.Getenv)
	if opts.Version != "" {
		stamp.Version = opts.Version
	}
	progress := func(e imagebuild.Event) {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%-8s %-12s %s %s\n", e.Step, e.Platform, e.Image, e.Detail)
	}

	binaries, err := imagebuild.CompileAll(ctx, src, filepath.Join(cfg.Abs(cfg.Local.StateDir), "build"), platforms, stamp, progress)
	if err != nil {
		return err
	}
	var caCerts []byte
	if opts.CACerts != "" {
		if caCerts, err = os.ReadFile(opts.CACerts); err != nil {
			return cli.Usage(fmt.Errorf("--ca-certs: %w", err))
		}
	}
	bo := imagebuild.Options{
		CACerts:  caCerts,
		Binaries: binaries, Platforms: platforms, Base: opts.Base,
		ImageName: cfg.Images.Name, Tag: tag,
		Progress: progress,
	}
	stamp.Label(&bo)

	var rows []imagebuild.Row
	if opts.Builder == builderDocker {
		if rows, err = imagebuild.BuildWithDocker(ctx, bo); err != nil {
			return err
		}
	} else {
		built, err := imagebuild.Assemble(ctx, bo)
		if err != nil {
			return err
		}
		if opts.OCIDir != "" {
			if err := imagebuild.WriteLayout(ctx, opts.OCIDir, built); err != nil {
				return err
			}
			progress(imagebuild.Event{Step: "write", Image: opts.OCIDir, Detail: "OCI layout"})
		}
		if opts.Tarball != "" {
			if err := imagebuild.WriteTarball(ctx, opts.Tarball, built); err != nil {
				return err
			}
			progress(imagebuild.Event{Step: "write", Image: opts.Tarball, Detail: "docker load tarball"})
		}
		if opts.Push {
			if err := imagebuild.Push(ctx, built, opts.Insecure); err != nil {
				return err
			}
			progress(imagebuild.Event{Step: "push", Image: cfg.Images.Name, Detail: "done"})
		}
		if opts.OCIDir == "" && opts.Tarball == "" && !opts.Push {
			fmt.Fprintln(opts.Env.IO.ErrOut, "no --push, --oci or --tar: the images were built and not written")
		}
		if rows, err = imagebuild.Summary(built); err != nil {
			return err
		}
	}
	out := Output{Images: rows, Duration: time.Since(start).Seconds()}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(out)
	}
	tw := tabwriter.NewWriter(opts.Env.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tPLATFORM\tDIGEST\tSIZE")
	for _, r := range rows {
		size := ""
		if r.Size > 0 {
			size = fmt.Sprintf("%.1f MiB", float64(r.Size)/(1<<20))
		}
		id := r.Digest
		if id == "" {
			id = "image id " + r.ID
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Image, r.Platform, id, size)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(opts.Env.IO.ErrOut, "built %d images in %s\n", len(rows), time.Since(start).Round(10*time.Millisecond))
	return nil
}
