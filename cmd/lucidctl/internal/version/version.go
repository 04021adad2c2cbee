// Package version implements `lucidctl version`.
package version

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/buildinfo"
)

// Options are the inputs of `lucidctl version`.
type Options struct {
	Env *cli.Env
}

// NewCmd returns the version command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	return cli.SupportsJSON(&cobra.Command{
		Use:   "version",
		Short: "Print lucidctl's version, commit, Go version and platform",
		Args:  cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	})
}

func run(_ context.Context, opts *Options) error {
	info := buildinfo.Read()
	if opts.Env.JSON {
		return opts.Env.PrintJSON(info)
	}
	_, err := fmt.Fprintf(opts.Env.IO.Out, "lucidctl %s\ncommit:   %s\ngo:       %s\nplatform: %s/%s\n",
		info.Version, info.Commit, info.GoVersion, info.OS, info.Arch)
	return err
}
