// Package validate implements `lucidctl validate`: it checks a compose file
// and the env files it uses for what would break a Pi deployment.
package validate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/stackcheck"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// Options are the inputs of `lucidctl validate`.
type Options struct {
	Env         *cli.Env
	ComposeFile string
	EnvFiles    []string
}

// NewCmd returns the validate command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "validate [COMPOSE_FILE]",
		Short: "Check the compose and env files for what would break a deployment",
		Long: `Load a compose file (default: the rendered configs/docker/docker-compose.core.yml)
with compose-go and report, with file and line:

  missing-variable               ${VAR} not set, or empty, in the --env-files (default: .env beside it)
  missing-secret                 a service's required secret absent from what its container gets
  missing-env-file               an env_file that does not exist
  port-collision                 two services publishing the same host port
  undefined-dependency           depends_on naming a service the file lacks
  dependency-without-healthcheck waiting for service_healthy on a service without a healthcheck
  image-name                     an image other than lucid.yaml's name for that service
  healthcheck-tool               a healthcheck needing a shell, curl or python (images are distroless)

A warning is no problem (the exit status stays 0), on stderr and in --json's
"warnings":

  plain-http                     the gateway serving plain HTTP beyond the host's loopback

Exit status 3 when there are problems.`,
		Example: `  lucidctl validate
  lucidctl validate other/docker-compose.yml --env-file other/.env --json`,
		Args: cli.MaxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.ComposeFile = args[0]
			}
			return run(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringArrayVar(&opts.EnvFiles, "env-file", nil, "env file for ${VAR} interpolation (repeatable; later files win)")
	cmd.AddCommand(stackcheck.NewCmd(env))
	return cli.SupportsJSON(cmd)
}

// Output is the --json result.
type Output struct {
	File     string                `json:"file"`
	Problems []deployfiles.Problem `json:"problems"`
	Warnings []deployfiles.Problem `json:"warnings"`
}

func run(ctx context.Context, opts *Options) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	file := opts.ComposeFile
	if file == "" {
		file = filepath.Join(cfg.Dir, filepath.FromSlash(deployfiles.ComposePath))
		if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
			return cli.WithHint(fmt.Errorf("%s does not exist", file), "`lucidctl render` writes it, or name a compose file")
		}
	}
	problems, warnings, err := deployfiles.ValidateAll(ctx, deployfiles.ValidateOptions{
		ComposeFile: file, EnvFiles: opts.EnvFiles, ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag,
	})
	if err != nil {
		return err
	}
	loose, err := deployfiles.LooseSecrets(ctx, cfg.Dir)
	if err != nil {
		return err
	}
	for _, l := range loose {
		problems = append(problems, deployfiles.Problem{File: l.Path, Rule: "secret-mode",
			Message: fmt.Sprintf("mode %04o lets others read the secrets it holds; want %04o (`lucidctl render` sets it)", l.Mode, l.Want)})
	}
	if problems == nil {
		problems = []deployfiles.Problem{}
	}
	if warnings == nil {
		warnings = []deployfiles.Problem{}
	}
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(Output{File: file, Problems: problems, Warnings: warnings}); err != nil {
			return err
		}
	} else {
		for _, p := range problems {
			fmt.Fprintln(opts.Env.IO.Out, p.String())
		}
		for _, w := range warnings {
			fmt.Fprintln(opts.Env.IO.ErrOut, "warning: "+w.String())
		}
	}
	if len(problems) > 0 {
		if !opts.Env.JSON {
			fmt.Fprintf(opts.Env.IO.ErrOut, "%s: %d problems\n", file, len(problems))
		}
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	if !opts.Env.JSON {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%s: no problems\n", file)
	}
	return nil
}
