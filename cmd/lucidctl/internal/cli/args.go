package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// NoArgs refuses positional arguments as a usage error.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usage(fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0]))
	}
	return nil
}

// MaxArgs refuses more than n positional arguments as a usage error.
func MaxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return Usage(fmt.Errorf("%s takes at most %d argument(s), got %d", cmd.CommandPath(), n, len(args)))
		}
		return nil
	}
}
