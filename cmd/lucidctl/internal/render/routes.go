package render

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/routetable"
)

// RoutesOptions are the inputs of `lucidctl render routes`.
type RoutesOptions struct {
	Env   *cli.Env
	Force bool
	// Dir is where configs/ goes (default: lucid.yaml's directory).
	Dir string
}

func newRoutesCmd(env *cli.Env) *cobra.Command {
	opts := &RoutesOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "Start the project's gateway route table from the default one",
		Long: `Write ` + deployfiles.RoutesPath + ` (creating its folder) with the gateway's
default route table, every default spelled out, for you to edit. From then
on it is the gateway's table: render mounts it, deploy ships it, up runs it.

An existing table is left alone unless --force is given.`,
		Example: `  lucidctl render routes
  $EDITOR ` + deployfiles.RoutesPath + `
  lucidctl render && lucidctl deploy pi`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRoutes(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Force, "force", false, "replace an existing route table with the default one")
	cmd.Flags().StringVar(&opts.Dir, "dir", "", "directory to write configs/ under (default: the directory of lucid.yaml)")
	return cli.SupportsJSON(cmd)
}

func runRoutes(_ context.Context, opts *RoutesOptions) error {
	dir := opts.Dir
	if dir == "" {
		cfg, err := opts.Env.Config()
		if err != nil {
			return err
		}
		dir = cfg.Dir
	}
	path := filepath.Join(dir, filepath.FromSlash(deployfiles.RoutesPath))
	old, err := os.ReadFile(path)
	switch {
	case err == nil && !opts.Force:
		return cli.WithHint(fmt.Errorf("%s exists: it is the gateway's route table already", deployfiles.RoutesPath),
			"edit it; or start again from the default table with --force")
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	data, err := routetable.Marshal(routetable.Default())
	if err != nil {
		return err
	}
	rec := File{Path: deployfiles.RoutesPath, Status: status(old, data)} // old is nil when there was none
	if rec.Status != "unchanged" {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(rec)
	}
	fmt.Fprintf(opts.Env.IO.Out, "%-9s %s\n", rec.Status, rec.Path)
	fmt.Fprintln(opts.Env.IO.ErrOut, "the gateway's route table: edit it, then `lucidctl render` mounts it and `lucidctl up` runs it")
	return nil
}
