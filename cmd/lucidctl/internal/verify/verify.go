// Package verify implements `lucidctl verify`: checks that need no trust in
// the server. `verify receipt` checks an anchor receipt offline against
// validator public keys; `verify chain` walks a running chain block by block
// and re-verifies all of it; `verify tron-isolation` scans a source tree for
// payment code reaching the chain.
package verify

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// NewCmd returns the verify command and its subcommands.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify <check>",
		Short: "Verify receipts, chains, and the chain code's isolation from payments",
		Long: `Verify runs checks whose answer does not depend on trusting a server.

Exit status: 0 when the check passes, 3 when it finds a problem (the reason
is printed), 1 when it could not run.`,
		Args: cli.Subcommands,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newReceiptCmd(env), newChainCmd(env), newIsolationCmd(env))
	return cmd
}

// verdict ends a check the same way for every verify command: with --json
// the result document (exit 3 when invalid); otherwise nil when valid, for
// the caller to print its summary, or the problem (exit 3) when not.
func verdict(env *cli.Env, res any, valid bool, what, reason string) (printed bool, err error) {
	if env.JSON {
		if err := env.PrintJSON(res); err != nil {
			return true, err
		}
		if !valid {
			return true, &cli.SilentError{Code: cli.ExitProblems}
		}
		return true, nil
	}
	if !valid {
		return true, cli.Problems(fmt.Errorf("%s does not verify: %s", what, reason))
	}
	return false, nil
}
