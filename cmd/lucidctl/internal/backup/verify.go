package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// VerifyOptions are the inputs of `lucidctl backup verify`.
type VerifyOptions struct {
	Env *cli.Env
	To  string
	// ID is the backup ("": the latest complete one).
	ID string
	// Identity decrypts it ("": backup.identity of lucid.yaml).
	Identity string
	// EnvFile holds the operator token, whose signing key is trusted
	// ("": local.env_file).
	EnvFile string
	// AllowUnsigned verifies a backup no trusted key signed.
	AllowUnsigned bool
}

func newVerifyCmd(env *cli.Env) *cobra.Command {
	opts := &VerifyOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "verify [ID] [--to DIR] [--identity FILE]",
		Short: "Check that every piece of a backup is present, decrypts and is intact",
		Long: `Read every piece of the backup (by default the latest complete one), decrypt
it with the identity (backup.identity of lucid.yaml, or --identity) and check
its SHA-256 against its name. Exit 3 when a piece is missing or damaged; the
pieces are named on stdout.

The backup must be signed by a key of backup.signers in lucid.yaml, or by the
one lucidctl backup derives from the operator token (--env-file); one nobody
trusted signed is refused (exit 3) unless --allow-unsigned.`,
		Example: `  lucidctl backup verify --to /srv/lucid-backups
  lucidctl backup verify 20261205T140238.179476Z-8ecb6a --identity ~/.config/lucid/backup.key`,
		Args: cli.MaxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.ID = args[0]
			}
			return runVerify(cmd.Context(), opts)
		},
	}
	cmd.Flags().StringVar(&opts.To, "to", "", "the backup repository (default: backup.dir of lucid.yaml)")
	cmd.Flags().StringVar(&opts.Identity, "identity", "", "age identity file or SSH private key (default: backup.identity of lucid.yaml)")
	cmd.Flags().StringVar(&opts.EnvFile, "env-file", "", "the operator's env file, whose LUCID_OPERATOR_TOKEN's signing key is trusted (default: local.env_file of lucid.yaml)")
	cmd.Flags().BoolVar(&opts.AllowUnsigned, "allow-unsigned", false, "verify a backup that no trusted key signed")
	return cli.SupportsJSON(cmd)
}

func runVerify(ctx context.Context, opts *VerifyOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	repo, dir, err := OpenRepository(ctx, cfg, "--to", opts.To)
	if err != nil {
		return err
	}
	if err := TrustSigners(repo, cfg, OperatorToken(opts.Env, opts.EnvFile), opts.AllowUnsigned); err != nil {
		return err
	}
	ids, err := Identities(cfg, repo, opts.Identity)
	if err != nil {
		return err
	}
	id := opts.ID
	if id == "" {
		latest, err := repo.Latest(ctx)
		if err != nil {
			return ExplainUnsigned(err)
		}
		id = latest.ID
	}
	fmt.Fprintf(opts.Env.IO.ErrOut, "verifying backup %s in %s\n", id, dir)
	rep, err := repo.Verify(ctx, id, ids)
	err = ExplainUnsigned(ExplainIdentity(err))
	if rep == nil {
		return err
	}
	if opts.Env.JSON {
		if perr := opts.Env.PrintJSON(rep); perr != nil {
			return perr
		}
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintln(opts.Env.IO.Out, p)
		}
		if len(rep.Problems) == 0 {
			fmt.Fprintf(opts.Env.IO.Out, "backup %s: %d piece(s), %s, all present and intact\n", id, rep.Pieces, iostreams.Bytes(rep.Bytes))
		}
	}
	if errors.Is(err, backup.ErrCorrupt) {
		return cli.Problems(err)
	}
	return err
}

// Identities reads the keys that decrypt repo: from flag (--identity), else
// backup.identity of lucid.yaml; none for a plaintext repository. Restore
// reads a repository the same way.
func Identities(cfg *projectconfig.Config, repo *backup.Repository, flag string) ([]age.Identity, error) {
	if !repo.Encrypted() {
		return nil, nil
	}
	path := flag
	if path == "" && cfg.Backup.Identity != "" {
		path = cfg.Abs(cfg.Backup.Identity)
		if strings.HasPrefix(cfg.Backup.Identity, "~/") { // ReadIdentities expands it
			path = cfg.Backup.Identity
		}
	}
	if path == "" {
		return nil, cli.Usage(errors.New("the repository is encrypted: --identity FILE, or backup.identity in lucid.yaml, names the key that decrypts it"))
	}
	ids, err := backup.ReadIdentities(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return ids, nil
}

// ExplainIdentity adds to an error of a wrong identity which one to use.
func ExplainIdentity(err error) error {
	if errors.Is(err, backup.ErrWrongIdentity) {
		return cli.WithHint(err, "use the identity whose public key was in backup.recipients when this backup was taken")
	}
	return err
}
