package backup

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/backup"
)

// ListOptions are the inputs of `lucidctl backup list`.
type ListOptions struct {
	Env *cli.Env
	To  string
}

// ListOutput is `lucidctl backup list --json`.
type ListOutput struct {
	Repository string `json:"repository"`
	Encrypted  bool   `json:"encrypted"`
	// Backups are oldest first; the latest is the last one not partial.
	Backups []backup.Info `json:"backups"`
}

func newListCmd(env *cli.Env) *cobra.Command {
	opts := &ListOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "list [--to DIR]",
		Short: "List the backups of a repository, partial ones marked",
		Long: `List the backups in the repository, oldest first. A partial backup never
completed (it was killed or failed): it cannot be restored, and the next
backup reuses its pieces. Listing needs no identity: what it shows is kept in
plaintext beside each encrypted manifest.`,
		Example: `  lucidctl backup list --to /srv/lucid-backups
  lucidctl backup list --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runList(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.To, "to", "", "the backup repository (default: backup.dir of lucid.yaml)")
	return cli.SupportsJSON(cmd)
}

func runList(ctx context.Context, opts *ListOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	repo, dir, err := OpenRepository(ctx, cfg, "--to", opts.To)
	if err != nil {
		return err
	}
	all, err := repo.Backups(ctx)
	if err != nil {
		return err
	}
	out := ListOutput{Repository: dir, Encrypted: repo.Encrypted(), Backups: all}
	if out.Backups == nil {
		out.Backups = []backup.Info{}
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(out)
	}
	if len(all) == 0 {
		fmt.Fprintf(opts.Env.IO.ErrOut, "no backups in %s\n", dir)
		return nil
	}
	tw := tabwriter.NewWriter(opts.Env.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTARGET\tHOST\tSTARTED\tBYTES\tSENT\tSTATE")
	for _, b := range all {
		size, sent, state := "-", "-", "complete"
		if b.Totals != nil {
			size, sent = iostreams.Bytes(b.Totals.Bytes), iostreams.Bytes(b.Totals.BytesSent)
		}
		if b.Partial {
			state = "PARTIAL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Target, b.Host, b.StartedAt.Local().Format(time.DateTime), size, sent, state)
	}
	return tw.Flush()
}
