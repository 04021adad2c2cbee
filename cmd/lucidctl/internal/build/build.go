// Package build implements `lucidctl build`: it cross-compiles lucid and
// assembles the six service images, without a Docker daemon by default or
// through the Docker Engine with --builder docker.
package build

import (
	"context"
	"errors"
	"fmt"
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
	Env *cli.Env
	// Image decides the images' bytes, as for deploy.
	Image    ImageFlags
	Builder  string
	Tag      string
	Push     bool
	Insecure bool
	OCIDir   string
	Tarball  string
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
--lucid FILE takes a ready binary for one platform instead, and labels the
images with the version it was stamped with. lucidctl deploy takes the same
image flags and makes the same images.

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
  lucidctl build --platform linux/amd64 --builder docker
  lucidctl build --lucid bin/lucid --platform linux/amd64 --oci dist/oci`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	opts.Image.Add(f)
	f.StringVar(&opts.Builder, "builder", builderOCI, "oci (no daemon) or docker (the Docker Engine API)")
	f.StringVar(&opts.Tag, "tag", "", "image tag (default: images.tag of lucid.yaml)")
	f.BoolVar(&opts.Push, "push", false, "push the images to their registries")
	f.BoolVar(&opts.Insecure, "insecure-registry", false, "allow plain HTTP to the registry (with --push)")
	f.StringVar(&opts.OCIDir, "oci", "", "write the images into this OCI image layout directory")
	f.StringVar(&opts.Tarball, "tar", "", "write a tarball that docker load accepts (one platform)")
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
	spec, err := opts.Image.Spec(cfg, opts.Env.Getenv)
	if err != nil {
		return err
	}
	switch {
	case opts.Builder != builderOCI && opts.Builder != builderDocker:
		return cli.Usage(fmt.Errorf("--builder %q: use oci or docker", opts.Builder))
	case opts.Builder == builderDocker && spec.Base != imagebuild.BaseAuto && spec.Base != imagebuild.BaseScratch:
		return cli.Usage(errors.New("--builder docker builds on scratch only; --base is for the default builder"))
	case opts.Builder == builderDocker && len(spec.Platforms) != 1:
		return cli.Usage(imagebuild.ErrDockerPlatforms)
	case opts.Builder == builderDocker && (opts.OCIDir != "" || opts.Tarball != "" || opts.Push):
		return cli.Usage(errors.New("--builder docker leaves the images in the Docker Engine; --push, --oci and --tar are for the default builder"))
	case opts.Tarball != "" && len(spec.Platforms) != 1:
		return cli.Usage(imagebuild.ErrTarballPlatforms)
	}
	if opts.Tag != "" {
		spec.Tag = opts.Tag
	}
	spec.Builder = imagebuild.Daemonless{}
	if opts.Builder == builderDocker {
		spec.Builder = imagebuild.DockerEngine{}
	}
	progress := func(e imagebuild.Event) {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%-8s %-12s %s %s\n", e.Step, e.Platform, e.Image, e.Detail)
	}
	spec.Progress = progress

	res, err := imagebuild.Build(ctx, spec)
	if err != nil {
		return err
	}
	if res.Images != nil {
		if err := write(ctx, opts, spec.ImageName, res.Images, progress); err != nil {
			return err
		}
	}
	rows := res.Rows
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

// write sends the daemonless builder's images where the flags say.
func write(ctx context.Context, opts *Options, imageName string, built []imagebuild.Built, progress func(imagebuild.Event)) error {
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
		progress(imagebuild.Event{Step: "push", Image: imageName, Detail: "done"})
	}
	if opts.OCIDir == "" && opts.Tarball == "" && !opts.Push {
		fmt.Fprintln(opts.Env.IO.ErrOut, "no --push, --oci or --tar: the images were built and not written")
	}
	return nil
}
