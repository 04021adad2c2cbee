// Package token implements `lucidctl token`: it mints an HS256 JWT for a
// tier, signed with the deployment's JWT_SECRET_KEY, for testing the
// gateway by hand or from scripts.
package token

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envfile"
)

// Options are the inputs of `lucidctl token`.
type Options struct {
	Env     *cli.Env
	Subject string
	Tier    string
	TTL     time.Duration
	EnvFile string
	Now     func() time.Time
}

// maxTTL keeps test tokens from living forever by accident.
const maxTTL = 30 * 24 * time.Hour

// NewCmd returns the token command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env, Now: time.Now}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a JWT for a tier, signed with JWT_SECRET_KEY",
		Long: `Mint an HS256 JWT that the gateway accepts, with claims sub, tier and exp.

The secret is JWT_SECRET_KEY from the environment or, when that is unset,
from the project's env file (local.env_file in lucid.yaml, by default
configs/environment/.env.core). The token goes to stdout, alone on its line.`,
		Example: `  lucidctl token --tier premium
  curl -H "Authorization: Bearer $(lucidctl token --sub alice)" localhost:8080/api/v1/blocks/latest`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Subject, "sub", "lucidctl", "subject (`sub` claim) the token is for")
	f.StringVar(&opts.Tier, "tier", string(auth.TierFree), "rate-limit tier: free, premium or enterprise")
	f.DurationVar(&opts.TTL, "ttl", time.Hour, "lifetime of the token")
	f.StringVar(&opts.EnvFile, "env-file", "", "env file to read JWT_SECRET_KEY from (default: local.env_file of lucid.yaml)")
	_ = cmd.RegisterFlagCompletionFunc("tier", cobra.FixedCompletions([]string{"free", "premium", "enterprise"}, cobra.ShellCompDirectiveNoFileComp))
	return cli.SupportsJSON(cmd)
}

// Output is the --json form of a minted token.
type Output struct {
	Token     string    `json:"token"`
	Subject   string    `json:"sub"`
	Tier      string    `json:"tier"`
	ExpiresAt time.Time `json:"expires_at"`
}

func run(_ context.Context, opts *Options) error {
	tier, err := auth.ParseTier(opts.Tier)
	if err != nil {
		return cli.Usage(err)
	}
	if opts.TTL <= 0 || opts.TTL > maxTTL {
		return cli.Usage(fmt.Errorf("--ttl %s is outside 1s..%s", opts.TTL, maxTTL))
	}
	secret, source, err := findSecret(opts)
	if err != nil {
		return err
	}
	opts.Env.Logger.Debug("signing token", "secret_from", source)
	tok, claims, err := auth.Mint([]byte(secret), auth.MintOptions{Subject: opts.Subject, Tier: tier, TTL: opts.TTL, Now: opts.Now()})
	if err != nil {
		return fmt.Errorf("JWT_SECRET_KEY from %s: %w", source, err)
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(Output{Token: tok, Subject: claims.Subject, Tier: string(claims.Tier), ExpiresAt: claims.ExpiresAt.UTC()})
	}
	_, err = fmt.Fprintln(opts.Env.IO.Out, tok)
	return err
}

// findSecret returns JWT_SECRET_KEY and where it came from (never the
// value, which must not reach any message).
func findSecret(opts *Options) (secret, source string, err error) {
	if s := opts.Env.Getenv("JWT_SECRET_KEY"); s != "" {
		return s, "the environment", nil
	}
	path := opts.EnvFile
	if path == "" {
		cfg, err := opts.Env.Config()
		if err != nil {
			return "", "", err
		}
		path = cfg.Abs(cfg.Local.EnvFile)
	}
	vars, err := envfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", cli.WithHint(fmt.Errorf("JWT_SECRET_KEY is not set and %s does not exist", path),
			"`lucidctl up` or `lucidctl render` creates the env file; or export JWT_SECRET_KEY")
	}
	if err != nil {
		return "", "", err
	}
	s := vars["JWT_SECRET_KEY"]
	if s == "" {
		return "", "", fmt.Errorf("JWT_SECRET_KEY from %s: %w: it is empty", path, auth.ErrWeakSecret)
	}
	return s, path, nil
}
