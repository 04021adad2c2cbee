// Package secrets implements `lucidctl secrets pull`, `diff`, `rotate`
// and `prune`: the secrets of a host's current release brought into the
// operator's env file, the names of those that differ from what a deploy
// from here would send, and rotations without downtime in the local env
// file (the old value kept, for a while, among the previous ones). Values
// never leave memory: only key names are printed.
package secrets

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// NewCmd returns `lucidctl secrets` with pull and diff.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secrets <command>",
		Short: "Take a host's secrets, see which differ from the rendered ones, rotate them",
		Long: `Once a host holds data, the secrets of its current release are the truth: a
fresh clone's render makes new ones, and deploy refuses to replace those the
data is bound to. pull brings the host's into the operator's env file; diff
names those that differ; rotate replaces one in the local env file while the
old value stays accepted for a while; prune drops retired old values. Only
key names are ever printed.`,
		Args: cli.Subcommands,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newPullCmd(env), newDiffCmd(env), newRotateCmd(env), newPruneCmd(env))
	return cmd
}

// PullOptions are the inputs of `lucidctl secrets pull`.
type PullOptions struct {
	Env   *cli.Env
	Fleet fleet.Flags
}

// PullOutput is `lucidctl secrets pull --json`: key names, never values.
type PullOutput struct {
	Target  string `json:"target"`
	Release string `json:"release"`
	File    string `json:"file"`
	// Changed are the keys the file now holds the host's value of.
	Changed []string `json:"changed"`
}

func newPullCmd(env *cli.Env) *cobra.Command {
	opts := &PullOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "pull --target TARGET",
		Short: "Write a host's current secrets into the operator's env file",
		Long: `Read the env files of the target's current release over SSH and write the
secrets they hold into the operator's env file (local.env_file of
lucid.yaml), atomically with mode 0600, keeping every other value and line.
The keys changed are named on stderr; then run lucidctl render, so that each
service's env file carries them.

The host keeps only the hash of LUCID_OPERATOR_TOKEN: when the local one does
not match it, pull says so and exits 1 (having written the others); set the
token its holder has, or deploy with --rotate LUCID_OPERATOR_TOKEN.

--target names one target: a group has no single set of secrets.`,
		Example: `  lucidctl secrets pull --target pi
  lucidctl render`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPull(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target of lucid.yaml to take the secrets of (required)")
	fleet.Complete(cmd, env)
	return cli.SupportsJSON(cmd)
}

func runPull(ctx context.Context, opts *PullOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	if _, err := opts.Fleet.One(cfg, "pull takes one, whose secrets go into one env file"); err != nil {
		return err
	}
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	h := fl.Hosts[0]
	d, err := deploy.New(h.DeployConfig())
	if err != nil {
		return err
	}
	defer d.Close()
	release, host, err := d.CurrentSecrets(ctx)
	if err != nil {
		return err
	}
	if release == "" {
		return fmt.Errorf("%s has no current release: there are no secrets to pull (a deploy from here makes yours its)", h.Name)
	}

	file := cfg.Abs(cfg.Local.EnvFile)
	local := map[string]string{}
	if _, err := os.Stat(file); err == nil {
		if local, err = envfile.Read(file); err != nil {
			return err // names the file and line, never a value
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	set, unknown := host.OperatorValues(local)
	changed, err := envfile.Set(file, set)
	if err != nil {
		return err
	}
	out := PullOutput{Target: h.Name, Release: release, File: relTo(cfg, file), Changed: changed}
	if out.Changed == nil {
		out.Changed = []string{}
	}
	w := opts.Env.IO.ErrOut
	release = iostreams.Safe(release) // the host's current link names it
	if len(changed) == 0 {
		fmt.Fprintf(w, "%s: %s already holds the secrets of release %s\n", h.Name, out.File, release)
	} else {
		fmt.Fprintf(w, "%s: %s now holds release %s's %s; run `lucidctl render` so that each service's env file does too\n", h.Name, out.File, release, strings.Join(changed, ", "))
	}
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(out); err != nil {
			return err
		}
	}
	if len(unknown) > 0 {
		return cli.WithHint(fmt.Errorf("%s: the host keeps only a hash of %s, and %s's does not match it", h.Name, strings.Join(unknown, ", "), out.File),
			"set the token its holder has in "+out.File+", or deploy with --rotate LUCID_OPERATOR_TOKEN to replace it on purpose")
	}
	return nil
}

// DiffOptions are the inputs of `lucidctl secrets diff`.
type DiffOptions struct {
	Env   *cli.Env
	Fleet fleet.Flags
}

// DiffHost is one host in `lucidctl secrets diff --json`.
type DiffHost struct {
	Target string `json:"target"`
	// Release is the host's current release, "" when it has none.
	Release string `json:"release"`
	// Differ are the secrets whose rendered value is not the host's.
	Differ []string `json:"differ"`
	// DataBound are those of Differ a deploy refuses to replace.
	DataBound []string `json:"data_bound"`
}

// DiffOutput is `lucidctl secrets diff --json`.
type DiffOutput struct {
	Hosts       []DiffHost          `json:"hosts"`
	Unreachable []unreachableOutput `json:"unreachable"`
}

type unreachableOutput struct {
	Target string `json:"target"`
	Error  string `json:"error"`
}

func newDiffCmd(env *cli.Env) *cobra.Command {
	opts := &DiffOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "diff --target TARGET|GROUP",
		Short: "Name the secrets that differ between the rendered files and a host's current release",
		Long: `Compare the secrets of the rendered services' env files (what lucidctl deploy
would send) with those of each host's current release, and name the keys that
differ, and which of them a deploy refuses to replace. Never a value.

Exit status: 0 when none differ (or a host has no release); 3 when some do.`,
		Example: `  lucidctl secrets diff --target pi
  lucidctl secrets diff --target fleet --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDiff(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target or group of lucid.yaml to compare with (required)")
	fleet.Complete(cmd, env)
	return cli.SupportsJSON(cmd)
}

func runDiff(ctx context.Context, opts *DiffOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	if _, err := opts.Fleet.Names(cfg); err != nil {
		return err
	}
	envs, err := renderedEnvFiles(ctx, cfg)
	if err != nil {
		return err
	}
	// Each host is compared with the files a deploy would send it, their
	// operator credentials bound to it; without the token they stay the
	// local stack's, and the operator token is not compared.
	token := opts.Env.OperatorToken("LUCID_OPERATOR_TOKEN is not compared")
	if _, err := deployfiles.ReadDeployedSecrets(auth.LocalHost, envs); err != nil {
		return err // a file that does not parse, before any host is asked
	}
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	if s := fl.SkippedSummary(); s != "" {
		fmt.Fprintln(opts.Env.IO.ErrOut, s)
	}
	results := make([]DiffHost, len(fl.Hosts))
	var mu sync.Mutex
	index := map[string]int{}
	for i, h := range fl.Hosts {
		index[h.Name] = i
	}
	runErr := fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		d, err := deploy.New(h.DeployConfig())
		if err != nil {
			return err
		}
		defer d.Close()
		release, host, err := d.CurrentSecrets(ctx)
		if err != nil {
			return err
		}
		local, err := renderedFor(envs, token, h.Name)
		if err != nil {
			return err
		}
		r := DiffHost{Target: h.Name, Release: release, Differ: []string{}, DataBound: []string{}}
		if release != "" {
			for _, k := range host.Differ(local, token) {
				r.Differ = append(r.Differ, k)
				if slices.Contains(deployfiles.DataBound, k) {
					r.DataBound = append(r.DataBound, k)
				}
			}
		}
		mu.Lock()
		results[index[h.Name]] = r
		mu.Unlock()
		return nil
	})
	if runErr != nil {
		return runErr
	}
	differ := false
	for _, r := range results {
		differ = differ || len(r.Differ) > 0
	}
	if opts.Env.JSON {
		out := DiffOutput{Hosts: results, Unreachable: []unreachableOutput{}}
		for _, u := range fl.Unreachable {
			out.Unreachable = append(out.Unreachable, unreachableOutput{Target: u.Name, Error: u.Err.Error()})
		}
		if err := opts.Env.PrintJSON(out); err != nil {
			return err
		}
	} else {
		w := opts.Env.IO.Out
		for _, r := range results {
			switch {
			case r.Release == "":
				fmt.Fprintf(w, "%s: no current release (any secrets are taken)\n", r.Target)
			case len(r.Differ) == 0:
				fmt.Fprintf(w, "%s: the same as release %s\n", r.Target, r.Release)
			default:
				fmt.Fprintf(w, "%s: differ from release %s: %s", r.Target, r.Release, strings.Join(r.Differ, ", "))
				if len(r.DataBound) > 0 {
					fmt.Fprintf(w, " (a deploy refuses %s)", strings.Join(r.DataBound, ", "))
				}
				fmt.Fprintln(w)
			}
		}
	}
	if differ {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}

// renderedEnvFiles are the services' env files the rendered compose file
// names, by project path: what a deploy sends.
func renderedEnvFiles(ctx context.Context, cfg *projectconfig.Config) (map[string][]byte, error) {
	compose, err := os.ReadFile(filepath.Join(cfg.Dir, filepath.FromSlash(deployfiles.ComposePath)))
	if err != nil {
		return nil, cli.WithHint(fmt.Errorf("compose file: %w", err), "`lucidctl render` writes it")
	}
	paths, err := deployfiles.EnvFilesOf(ctx, cfg.Dir, compose)
	if err != nil {
		return nil, cli.WithHint(err, "`lucidctl render` writes the compose file and each service's env file")
	}
	out := map[string][]byte{}
	for _, p := range paths {
		if out[p], err = os.ReadFile(filepath.Join(cfg.Dir, filepath.FromSlash(p))); err != nil {
			return nil, cli.WithHint(fmt.Errorf("env file: %w", err), "`lucidctl render` writes it")
		}
	}
	return out, nil
}

// renderedFor is what the rendered env files say of the secrets as a
// deploy would send them to host: their operator credentials bound to it
// with token, or, without one, as rendered (the local stack's).
func renderedFor(envs map[string][]byte, token, host string) (deployfiles.DeployedSecrets, error) {
	if token == "" {
		return deployfiles.ReadDeployedSecrets(auth.LocalHost, envs)
	}
	bound, err := deployfiles.BindOperatorCredentials(envs, token, host)
	if err != nil {
		return deployfiles.DeployedSecrets{}, fmt.Errorf("%s: %w", host, err)
	}
	return deployfiles.ReadDeployedSecrets(host, bound)
}

// relTo is file relative to the project directory when it is inside it.
func relTo(cfg *projectconfig.Config, file string) string {
	if rel, err := filepath.Rel(cfg.Dir, file); err == nil && !strings.HasPrefix(rel, "..") {
		return filepath.ToSlash(rel)
	}
	return file
}
