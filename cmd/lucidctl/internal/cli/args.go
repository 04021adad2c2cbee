package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/pkg/yamlkeys"
)

// The positional-argument checks of every command. They return usage
// errors by type (exit 2), where cobra's own return untyped ones; a test
// walks the tree and refuses a command without one.

// NoArgs refuses positional arguments.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usage(fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0]))
	}
	return nil
}

// MaxArgs refuses more than n positional arguments.
func MaxArgs(n int) cobra.PositionalArgs { return RangeArgs(0, n) }

// ExactArgs wants exactly n positional arguments.
func ExactArgs(n int) cobra.PositionalArgs { return RangeArgs(n, n) }

// MinArgs wants at least n positional arguments.
func MinArgs(n int) cobra.PositionalArgs { return RangeArgs(n, -1) }

// RangeArgs wants between lo and hi positional arguments; hi < 0 means no
// upper bound.
func RangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		n := len(args)
		switch {
		case n >= lo && (hi < 0 || n <= hi):
			return nil
		case lo == hi:
			return Usage(fmt.Errorf("%s takes %s, got %d", cmd.CommandPath(), plural(lo), n))
		case hi < 0:
			return Usage(fmt.Errorf("%s takes at least %s, got %d", cmd.CommandPath(), plural(lo), n))
		case lo == 0:
			return Usage(fmt.Errorf("%s takes at most %s, got %d", cmd.CommandPath(), plural(hi), n))
		default:
			return Usage(fmt.Errorf("%s takes %d to %d arguments, got %d", cmd.CommandPath(), lo, hi, n))
		}
	}
}

func plural(n int) string {
	if n == 1 {
		return "1 argument"
	}
	return fmt.Sprintf("%d arguments", n)
}

// Subcommands is the argument check of a command that only groups others:
// a mistyped subcommand is a usage error, with cobra's suggestion.
func Subcommands(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return Usage(errors.New(msg))
}

// RequireFlag refuses a run where the flag called name was not given; use
// it instead of cobra's MarkFlagRequired, whose error is untyped.
func RequireFlag(cmd *cobra.Command, name string) error {
	if f := cmd.Flags().Lookup(name); f == nil || !f.Changed {
		return Usage(fmt.Errorf("%s needs --%s", cmd.CommandPath(), name))
	}
	return nil
}

// OnlyValidArgs refuses a positional argument not in the command's
// ValidArgs, with a suggestion.
func OnlyValidArgs(cmd *cobra.Command, args []string) error {
	for _, a := range args {
		if !slices.Contains(cmd.ValidArgs, a) {
			msg := fmt.Sprintf("%s: unknown argument %q (one of: %s)", cmd.CommandPath(), a, strings.Join(cmd.ValidArgs, ", "))
			if s := yamlkeys.Closest(a, cmd.ValidArgs); s != "" {
				msg = fmt.Sprintf("%s: unknown argument %q (did you mean %q?)", cmd.CommandPath(), a, s)
			}
			return Usage(errors.New(msg))
		}
	}
	return nil
}
