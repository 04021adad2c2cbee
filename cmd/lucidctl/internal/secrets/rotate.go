package secrets

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/packstore"
)

// DefaultOverlap is how long, by default, a rotated JWT_SECRET_KEY or
// LUCID_MESH_TOKEN keeps being accepted: the longest token lifetime the
// operator is expected to issue. lucidctl token's default --ttl (1 h) is
// far below it; a token minted with a longer one (up to 30 days) needs a
// longer --overlap, as the flag says.
const DefaultOverlap = 24 * time.Hour

// RotateOptions are the inputs of `lucidctl secrets rotate`.
type RotateOptions struct {
	Env     *cli.Env
	Key     string
	EnvFile string
	Overlap time.Duration
	// Now is the rotation time; zero means time.Now (tests fix it).
	Now time.Time
}

// RotateOutput is `lucidctl secrets rotate --json`: names and times, never
// a value.
type RotateOutput struct {
	Key  string `json:"key"`
	File string `json:"file"`
	// Previous is the variable now holding the old value.
	Previous string `json:"previous"`
	// KeyID names the new key where one is shown to operators: the JWT
	// kid, or the data chain's key id; "" for the mesh token.
	KeyID string `json:"key_id,omitempty"`
	// RetiresAt is when the old value stops being accepted; null for
	// ENCRYPTION_KEY, whose old value stays until pruned.
	RetiresAt *time.Time `json:"retires_at"`
	// Pruned counts the previous values dropped as retired.
	Pruned int `json:"pruned"`
}

func newRotateCmd(env *cli.Env) *cobra.Command {
	opts := &RotateOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "rotate KEY",
		Short: "Replace a secret in the local env file, keeping the old one accepted for a while",
		Long: `Rotate JWT_SECRET_KEY, LUCID_MESH_TOKEN or ENCRYPTION_KEY without downtime. In
the operator's env file only (atomically, mode 0600), a new value is
generated and the current one moves into the previous-values variable:

  JWT_SECRET_KEY    -> JWT_PREVIOUS_KEYS, until now + --overlap: tokens it
                       signed keep verifying at the gateway until then
  LUCID_MESH_TOKEN  -> LUCID_MESH_PREVIOUS_TOKENS, until now + --overlap:
                       services started with it still get certificates
  ENCRYPTION_KEY    -> ENCRYPTION_PREVIOUS_KEYS, with no end: the data chain
                       reads what it sealed until a compaction re-encrypts it

Previous values already retired are dropped. Nothing is printed of a value.
Then run lucidctl render, and lucidctl deploy --rotate KEY.`,
		Example: `  lucidctl secrets rotate JWT_SECRET_KEY --overlap 48h
  lucidctl render && lucidctl deploy pi --rotate JWT_SECRET_KEY`,
		Args: cli.ExactArgs(1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return keyring.Rotatable(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Key = args[0]
			return runRotate(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.EnvFile, "env-file", "", "the operator's env file (default: local.env_file of lucid.yaml)")
	f.DurationVar(&opts.Overlap, "overlap", DefaultOverlap, "how long the old JWT_SECRET_KEY or LUCID_MESH_TOKEN stays accepted: at least the longest token lifetime")
	return cli.SupportsJSON(cmd)
}

func runRotate(_ context.Context, opts *RotateOptions) error {
	if _, ok := keyring.PreviousVar[opts.Key]; !ok {
		return cli.Usage(fmt.Errorf("%s cannot be rotated here (one of: %s); others are replaced with lucidctl deploy --rotate", opts.Key, strings.Join(keyring.Rotatable(), ", ")))
	}
	if opts.Overlap <= 0 {
		return cli.Usage(fmt.Errorf("--overlap must be positive, got %s", opts.Overlap))
	}
	file, rel, err := operatorFile(opts.Env, opts.EnvFile)
	if err != nil {
		return err
	}
	values, err := envfile.Read(file)
	if err != nil {
		return cli.WithHint(err, "`lucidctl render` creates the env file")
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	before, _ := keyring.Parse(values[keyring.PreviousVar[opts.Key]])
	set, err := deployfiles.Rotate(values, deployfiles.Rotation{Key: opts.Key, Now: now, Overlap: opts.Overlap})
	if err != nil {
		return err
	}
	after, err := keyring.Parse(set[keyring.PreviousVar[opts.Key]])
	if err != nil {
		return err
	}
	if _, err := envfile.Set(file, set); err != nil {
		return err
	}
	out := RotateOutput{Key: opts.Key, File: rel, Previous: keyring.PreviousVar[opts.Key], Pruned: len(before) - len(keyring.Active(before, now))}
	out.KeyID = keyIDOf(opts.Key, set[opts.Key])
	if last := after[len(after)-1]; !last.Until.IsZero() {
		out.RetiresAt = &last.Until
	}
	w := opts.Env.IO.ErrOut
	fmt.Fprintf(w, "%s: %s has a new value; the old one is in %s", rel, opts.Key, out.Previous)
	if out.RetiresAt != nil {
		fmt.Fprintf(w, " until %s", out.RetiresAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	if out.Pruned > 0 {
		fmt.Fprintf(w, "%d retired previous value(s) dropped\n", out.Pruned)
	}
	fmt.Fprintf(w, "next: lucidctl render, then lucidctl deploy <target> --rotate %s\n", opts.Key)
	if opts.Key == "ENCRYPTION_KEY" {
		fmt.Fprintln(w, "then: lucidctl maintenance compact re-encrypts the packs; once the data chain's status counts no record under the old key id, lucidctl secrets prune --encryption-keys")
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(out)
	}
	return nil
}

// keyIDOf is the id operators see for key's value (the gateway's kid,
// the data chain's key id in its status), or "".
func keyIDOf(key, value string) string {
	switch key {
	case "JWT_SECRET_KEY":
		return auth.KeyID([]byte(value))
	case "ENCRYPTION_KEY":
		id, err := packstore.KeyIDOf([]byte(value))
		if err == nil {
			return id
		}
	}
	return ""
}

// PruneOptions are the inputs of `lucidctl secrets prune`.
type PruneOptions struct {
	Env     *cli.Env
	EnvFile string
	// EncryptionKeys drops ENCRYPTION_PREVIOUS_KEYS too.
	EncryptionKeys bool
	Now            time.Time
}

// PruneOutput is `lucidctl secrets prune --json`.
type PruneOutput struct {
	File string `json:"file"`
	// Dropped counts the previous values removed; Changed names the
	// variables that changed.
	Dropped int      `json:"dropped"`
	Changed []string `json:"changed"`
}

func newPruneCmd(env *cli.Env) *cobra.Command {
	opts := &PruneOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Drop retired previous secrets from the local env file",
		Long: `Drop from the operator's env file the previous values of rotated secrets
(JWT_PREVIOUS_KEYS, LUCID_MESH_PREVIOUS_TOKENS) whose retirement time has
passed. Previous encryption keys have no retirement time: --encryption-keys
drops them, which is safe only once the data chain's status counts no record
under their key ids (after lucidctl maintenance compact). Then lucidctl
render and lucidctl deploy.`,
		Example: `  lucidctl secrets prune
  lucidctl secrets prune --encryption-keys`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPrune(cmd.Context(), opts) },
	}
	f := cmd.Flags()
	f.StringVar(&opts.EnvFile, "env-file", "", "the operator's env file (default: local.env_file of lucid.yaml)")
	f.BoolVar(&opts.EncryptionKeys, "encryption-keys", false, "drop ENCRYPTION_PREVIOUS_KEYS too (only once no record needs them)")
	return cli.SupportsJSON(cmd)
}

func runPrune(_ context.Context, opts *PruneOptions) error {
	file, rel, err := operatorFile(opts.Env, opts.EnvFile)
	if err != nil {
		return err
	}
	values, err := envfile.Read(file)
	if err != nil {
		return cli.WithHint(err, "`lucidctl render` creates the env file")
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	set, dropped, err := deployfiles.Prune(values, now, opts.EncryptionKeys)
	if err != nil {
		return err
	}
	out := PruneOutput{File: rel, Dropped: dropped, Changed: []string{}}
	if len(set) > 0 {
		if out.Changed, err = envfile.Set(file, set); err != nil {
			return err
		}
		slices.Sort(out.Changed)
	}
	w := opts.Env.IO.ErrOut
	if dropped == 0 {
		fmt.Fprintf(w, "%s: no previous value to drop\n", rel)
	} else {
		fmt.Fprintf(w, "%s: dropped %d previous value(s) from %s; next: lucidctl render, then lucidctl deploy\n", rel, dropped, strings.Join(out.Changed, ", "))
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(out)
	}
	return nil
}

// operatorFile is the operator's env file: path, or local.env_file of
// lucid.yaml; and how to name it.
func operatorFile(env *cli.Env, path string) (file, rel string, err error) {
	if path != "" {
		return path, path, nil
	}
	cfg, err := env.Config()
	if err != nil {
		return "", "", err
	}
	file = cfg.Abs(cfg.Local.EnvFile)
	return file, relTo(cfg, file), nil
}
