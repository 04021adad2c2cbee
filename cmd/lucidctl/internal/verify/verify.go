// Package verify implements `lucidctl verify`: checks that need no trust in
// the server. `verify receipt` checks an anchor receipt offline against
// validator public keys; `verify chain` walks a running chain block by block
// and re-verifies all of it.
package verify

import (
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// NewCmd returns the verify command and its subcommands.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify <check>",
		Short: "Verify receipts and chains without trusting a server",
		Long: `Verify runs checks whose answer does not depend on trusting a server.

Exit status: 0 when the check passes, 3 when it finds a problem (the reason
is printed), 1 when it could not run.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newReceiptCmd(env), newChainCmd(env))
	return cmd
}
