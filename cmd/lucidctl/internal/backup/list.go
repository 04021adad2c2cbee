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
	// EnvFile holds the operator token, whose signing key is trusted
	// ("": local.env_file).
	EnvFile string
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
		Short: "List the backups of a repository, partial ones and signatures marked",
		Long: `List the backups in the repository, oldest first. A partial backup never
completed (it was killed or failed): it cannot be restored, and the next
backup reuses its pieces. Listing needs no identity: what it shows is kept in
plaintext beside each encrypted manifest.

SIGNATURE says whether restore would take the backup: "trusted" (signed by a
key of backup.signers in lucid.yaml or by the operator token's, --env-file),
"untrusted" (signed by none of them: an older operator token's, or not the
operator's at all), "unsigned" (taken before backups were signed, or not the
operator's), "unreadable" (its signature or manifest could not be read:
backup verify says more), or "signed" when there is no key at hand to check
it with.`,
		Example: `  lucidctl backup list --to /srv/lucid-backups
  lucidctl backup list --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runList(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.To, "to", "", "the backup repository (default: backup.dir of lucid.yaml)")
	cmd.Flags().StringVar(&opts.EnvFile, "env-file", "", "the operator's env file, whose LUCID_OPERATOR_TOKEN's signing key is trusted (default: local.env_file of lucid.yaml)")
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
	keys, err := trustedKeys(cfg, OperatorToken(opts.Env, opts.EnvFile))
	if err != nil {
		// The list is still worth seeing; restore and verify refuse.
		fmt.Fprintf(opts.Env.IO.ErrOut, "warning: %v; the backups are checked against the other keys\n", err)
	}
	repo.Trust(keys)
	all, err := repo.Backups(ctx)
	if err != nil {
		return err
	}
	for i := range all {
		if !all[i].Partial {
			all[i].Signature = repo.SignatureOf(all[i].ID)
		}
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
	fmt.Fprintln(tw, "ID\tTARGET\tHOST\tSTARTED\tBYTES\tSENT\tSTATE\tSIGNATURE")
	for _, b := range all {
		size, sent, state, sig := "-", "-", "complete", string(b.Signature)
		if b.Totals != nil {
			size, sent = iostreams.Bytes(b.Totals.Bytes), iostreams.Bytes(b.Totals.BytesSent)
		}
		if b.Partial {
			state, sig = "PARTIAL", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Target, b.Host, b.StartedAt.Local().Format(time.DateTime), size, sent, state, sig)
	}
	return tw.Flush()
}
