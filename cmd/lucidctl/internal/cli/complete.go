package cli

import (
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
)

// Shell completion. A completion runs without the root command's
// PersistentPreRunE, so each function applies the global flags itself
// before it reads lucid.yaml; a project file it cannot read completes
// nothing rather than failing.

// completionConfig applies --config and LUCID_CONFIG for a completion.
func (e *Env) completionConfig(cmd *cobra.Command) bool {
	e.Init(cmd)
	_, err := e.Config()
	return err == nil
}

// TargetNames are the targets and groups of lucid.yaml, sorted, or none
// when it cannot be read.
func (e *Env) TargetNames(cmd *cobra.Command) []string {
	if !e.completionConfig(cmd) {
		return nil
	}
	var names []string
	for n := range e.config.Targets {
		names = append(names, n)
	}
	for n := range e.config.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// CompleteTargets completes a flag or argument that names a target or a
// group of lucid.yaml.
func (e *Env) CompleteTargets(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return withPrefix(e.TargetNames(cmd), toComplete, nil), cobra.ShellCompDirectiveNoFileComp
}

// CompleteTargetArgs completes positional TARGET|GROUP arguments, each
// once; most > 0 stops after that many arguments.
func (e *Env) CompleteTargetArgs(most int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if most > 0 && len(args) >= most {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return withPrefix(e.TargetNames(cmd), toComplete, args), cobra.ShellCompDirectiveNoFileComp
	}
}

// CompleteGroupMembers completes --hosts: the members of the --target
// group (every target when --target is not given yet).
func (e *Env) CompleteGroupMembers(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if !e.completionConfig(cmd) {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	if f := cmd.Flags().Lookup("target"); f != nil && f.Value.String() != "" {
		names, _ = e.config.Resolve(f.Value.String())
	} else {
		for n := range e.config.Targets {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	// A comma-separated list: complete its last element.
	done, last := "", toComplete
	if i := strings.LastIndex(toComplete, ","); i >= 0 {
		done, last = toComplete[:i+1], toComplete[i+1:]
	}
	var out []string
	for _, n := range withPrefix(names, last, strings.Split(done, ",")) {
		out = append(out, done+n)
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// withPrefix keeps the names that start with prefix and are not in given.
func withPrefix(names []string, prefix string, given []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) && !slices.Contains(given, n) {
			out = append(out, n)
		}
	}
	return out
}
