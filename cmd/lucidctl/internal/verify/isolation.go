package verify

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/isolation"
)

// IsolationOptions are the inputs of `lucidctl verify tron-isolation`.
type IsolationOptions struct {
	Env    *cli.Env
	Root   string
	Policy string
	Format string
}

func newIsolationCmd(env *cli.Env) *cobra.Command {
	opts := &IsolationOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "tron-isolation [PATH]",
		Short: "Scan a source tree: the chain code must not name or reach the payment system",
		Long: `Scan PATH (default: the current directory) under the isolation policy: the
isolation section of lucid.yaml, or --policy FILE, over the defaults (core
paths blockchain/, and this project's chain services and chain library when
scanning Lucid; terms tron, tronweb, tronpy, trx, trc20, usdt; payment under
blockchain/core/; the payment tree payment-systems/tron/ must exist, except
in Lucid's own tree, which holds none; a payment tree a policy names must
always exist).

Terms match as tokens (TronWeb, TRON_API_KEY and amountTRX are found; strong,
electronic and MATRIX are not). Go imports are followed through the tree's
own packages; Python and JavaScript/TypeScript imports are checked however
they are aliased. Lines marked TRON_ISOLATION_VERIFIED are exempt.

Exit status: 0 clean, 3 violations, 2 usage or I/O error.`,
		Example: `  lucidctl verify tron-isolation
  lucidctl verify tron-isolation ../lucid-blockchain --format json
  lucidctl verify tron-isolation --format sarif > isolation.sarif`,
		Args: cli.MaxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Root = "."
			if len(args) == 1 {
				opts.Root = args[0]
			}
			return runIsolation(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.Policy, "policy", "", "policy file (YAML with the keys of lucid.yaml's isolation section)")
	cmd.Flags().StringVar(&opts.Format, "format", "text", "text, json or sarif")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"text", "json", "sarif"}, cobra.ShellCompDirectiveNoFileComp))
	return cli.SupportsJSON(cmd)
}

func runIsolation(ctx context.Context, opts *IsolationOptions) error {
	format := opts.Format
	if opts.Env.JSON {
		format = "json"
	}
	if format != "text" && format != "json" && format != "sarif" {
		return cli.Usage(fmt.Errorf("--format %q: use text, json or sarif", format))
	}
	var policy isolation.Policy
	switch {
	case opts.Policy != "":
		data, err := os.ReadFile(opts.Policy)
		if err != nil {
			return cli.Usage(fmt.Errorf("--policy: %w", err))
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&policy); err != nil {
			return cli.Usage(fmt.Errorf("--policy %s: %w", opts.Policy, err))
		}
	default:
		cfg, err := opts.Env.Config()
		if err != nil {
			return err
		}
		if cfg.Isolation != nil {
			policy = *cfg.Isolation
		}
	}
	rep, err := isolation.Scan(ctx, opts.Root, policy)
	if err != nil {
		return cli.Usage(fmt.Errorf("scan %s: %w", opts.Root, err)) // I/O: exit 2
	}
	out := opts.Env.IO.Out
	switch format {
	case "json":
		err = isolation.WriteJSON(out, rep)
	case "sarif":
		err = isolation.WriteSARIF(out, rep, buildinfo.Read().Version)
	default:
		// The match is bracketed; color, on a terminal, only adds to that.
		st := opts.Env.IO.OutStyles()
		err = isolation.WriteText(out, rep, func(s string) string { return st.Error.Render("[" + s + "]") })
	}
	if err != nil {
		return err
	}
	if len(rep.Violations) > 0 {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}
