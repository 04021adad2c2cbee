// Package root assembles lucidctl's command tree and runs it: global flags,
// the subcommands, and the final mapping of the outcome to an exit code.
package root

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/backup"
	"github.com/pickme/lucid/cmd/lucidctl/internal/bench"
	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/deploy"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/maintenance"
	"github.com/pickme/lucid/cmd/lucidctl/internal/operate"
	"github.com/pickme/lucid/cmd/lucidctl/internal/render"
	"github.com/pickme/lucid/cmd/lucidctl/internal/restore"
	"github.com/pickme/lucid/cmd/lucidctl/internal/secrets"
	"github.com/pickme/lucid/cmd/lucidctl/internal/session"
	"github.com/pickme/lucid/cmd/lucidctl/internal/stack"
	"github.com/pickme/lucid/cmd/lucidctl/internal/token"
	"github.com/pickme/lucid/cmd/lucidctl/internal/validate"
	"github.com/pickme/lucid/cmd/lucidctl/internal/verify"
	"github.com/pickme/lucid/cmd/lucidctl/internal/version"
	"github.com/pickme/lucid/pkg/buildinfo"
)

// NewCmd returns the root command with every subcommand.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lucidctl <command>",
		Short: "Build, deploy, run and check the Lucid core services",
		Long: `lucidctl is the operations toolkit of Lucid: it runs the core services
locally, mints test tokens, pushes sessions into the data chain, and verifies
receipts and chains without trusting a server.

Results go to stdout; progress and diagnostics go to stderr.`,
		Version:       buildinfo.Read().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cli.Subcommands,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			env.Init(cmd)
			return env.CheckJSON(cmd)
		},
	}
	cmd.SetIn(env.IO.In)
	cmd.SetOut(env.IO.Out)
	cmd.SetErr(env.IO.ErrOut)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return cli.Usage(err) })

	pf := cmd.PersistentFlags()
	pf.StringVar(&env.ConfigPath, "config", env.ConfigPath, "project file (env LUCID_CONFIG)")
	pf.BoolVarP(&env.Verbose, "verbose", "v", false, "log diagnostics to stderr")
	pf.BoolVar(&env.JSON, "json", false, "print the result as JSON (commands that have a result)")
	pf.BoolVar(&env.NoColor, "no-color", false, "never use color (also NO_COLOR=1)")

	cmd.AddGroup(&cobra.Group{ID: "local", Title: "Local stack:"}, &cobra.Group{ID: "deploy", Title: "Deployment:"}, &cobra.Group{ID: "tools", Title: "Tools:"})
	for _, c := range stack.NewCmds(env) {
		c.GroupID = "local"
		cmd.AddCommand(c)
	}
	rend, val, bld := render.NewCmd(env), validate.NewCmd(env), build.NewCmd(env)
	rend.GroupID, val.GroupID, bld.GroupID = "deploy", "deploy", "deploy"
	cmd.AddCommand(rend, val, bld)
	for _, c := range deploy.NewCmds(env) {
		c.GroupID = "deploy"
		cmd.AddCommand(c)
	}
	for _, c := range operate.NewCmds(env) {
		c.GroupID = "deploy"
		cmd.AddCommand(c)
	}
	sec, bak, rst := secrets.NewCmd(env), backup.NewCmd(env), restore.NewCmd(env)
	sec.GroupID, bak.GroupID, rst.GroupID = "deploy", "deploy", "deploy"
	cmd.AddCommand(sec, bak, rst)
	bch, mnt := bench.NewCmd(env), maintenance.NewCmd(env)
	bch.GroupID, mnt.GroupID = "deploy", "deploy"
	cmd.AddCommand(bch, mnt)
	tok, ver, sess := token.NewCmd(env), verify.NewCmd(env), session.NewCmd(env)
	tok.GroupID, ver.GroupID, sess.GroupID = "tools", "tools", "tools"
	cmd.AddCommand(tok, ver, sess, version.NewCmd(env))
	return cmd
}

// Execute runs lucidctl with args and returns the process exit code.
func Execute(ctx context.Context, args []string, io *iostreams.IOStreams, getenv func(string) string) int {
	env := cli.NewEnv(io, getenv)
	cmd := NewCmd(env)
	cmd.SetArgs(args)
	failed, err := cmd.ExecuteContextC(ctx)
	if failed != nil {
		// A usage error points at the --help of the command that failed.
		err = cli.UsageOf(err, failed.CommandPath())
	}
	if err == nil && io.OutErr() != nil {
		err = fmt.Errorf("writing the result to stdout: %w", io.OutErr())
	}
	if env.NoColor {
		io.DisableColor() // the error may predate the flags taking effect
	}
	return cli.Report(ctx, io, err)
}
