package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/pkg/restoredata"
)

// newDataCmd is `lucid data`: what is done to a service's data directory
// from outside the service. The images hold nothing but this binary (no
// shell, no tar), so lucidctl's restore runs `lucid data restore` in a
// one-shot container of the service's image with its volume mounted.
func newDataCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Work on a service's data directory while the service is stopped",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	var dir string
	restore := &cobra.Command{
		Use:   "restore --dir DIR < STREAM",
		Short: "Replace DIR's content with the files of a restore stream read on stdin",
		Long: `restore reads a restore stream on stdin (a tar whose first entry,
` + restoredata.ManifestName + `, lists every file with its size, mode and SHA-256),
stages the files under DIR, checks each against the list, and only when all
of them match puts them in place and removes everything else DIR held. A
stream cut short, a file that does not match or a path that would leave DIR
changes nothing. The service must be stopped. It prints the result as JSON.

lucidctl restore runs it; it is not meant to be run by hand.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError{errors.New("--dir is required")}
			}
			res, err := restoredata.Replace(cmd.Context(), dir, cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("restore %s: %w", dir, err)
			}
			_, _ = fmt.Fprintf(stderr, "restored %d files (%d bytes) into %s, removed %d entries\n", res.Files, res.Bytes, dir, res.Removed)
			return json.NewEncoder(stdout).Encode(res)
		},
	}
	restore.Flags().StringVar(&dir, "dir", "", "the data directory to replace (required; it must exist)")
	cmd.AddCommand(restore)
	return cmd
}
