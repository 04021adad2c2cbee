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
	// Issuer and Audience are the iss and aud claims (--issuer,
	// --audience; empty: none). Nil takes LUCID_JWT_ISSUER and
	// LUCID_JWT_AUDIENCE from where JWT_SECRET_KEY is found, the
	// environment or else the env file, so that a token is what the
	// deployment's gateway requires.
	Issuer, Audience *string
}

// maxTTL keeps test tokens from living forever by accident.
const maxTTL = 30 * 24 * time.Hour

// NewCmd returns the token command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env, Now: time.Now}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint a JWT for a tier, signed with JWT_SECRET_KEY",
		Long: `Mint an HS256 JWT that the gateway accepts, with claims sub, tier and exp,
and iss and aud when the deployment's gateway requires them.

The secret is JWT_SECRET_KEY from the environment or, when that is unset,
from the project's env file (local.env_file in lucid.yaml, by default
configs/environment/.env.core). The issuer and audience default to
LUCID_JWT_ISSUER and LUCID_JWT_AUDIENCE, found the same way. The token goes
to stdout, alone on its line.`,
		Example: `  lucidctl token --tier premium
  curl -H "Authorization: Bearer $(lucidctl token --sub alice)" localhost:8080/api/v1/blocks/latest
  lucidctl token --issuer https://auth.example --audience lucid-gateway`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("issuer") {
				opts.Issuer = nil
			}
			if !cmd.Flags().Changed("audience") {
				opts.Audience = nil
			}
			return run(cmd.Context(), opts)
		},
	}
	opts.Issuer, opts.Audience = new(string), new(string)
	f := cmd.Flags()
	f.StringVar(&opts.Subject, "sub", "lucidctl", "subject (`sub` claim) the token is for")
	f.StringVar(&opts.Tier, "tier", string(auth.TierFree), "rate-limit tier: free, premium or enterprise")
	f.DurationVar(&opts.TTL, "ttl", time.Hour, "lifetime of the token")
	f.StringVar(&opts.EnvFile, "env-file", "", "env file to read JWT_SECRET_KEY from (default: local.env_file of lucid.yaml)")
	f.StringVar(opts.Issuer, "issuer", "", "issuer (`iss` claim; default "+auth.EnvIssuer+" from the environment or the env file; empty: none)")
	f.StringVar(opts.Audience, "audience", "", "audience (`aud` claim; default "+auth.EnvAudience+" from the environment or the env file; empty: none)")
	_ = cmd.RegisterFlagCompletionFunc("tier", cobra.FixedCompletions([]string{"free", "premium", "enterprise"}, cobra.ShellCompDirectiveNoFileComp))
	return cli.SupportsJSON(cmd)
}

// Output is the --json form of a minted token.
type Output struct {
	Token     string    `json:"token"`
	Subject   string    `json:"sub"`
	Tier      string    `json:"tier"`
	Issuer    string    `json:"iss,omitempty"`
	Audience  []string  `json:"aud,omitempty"`
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
	if err := auth.CheckSubject(opts.Subject); err != nil {
		return cli.Usage(fmt.Errorf("--sub: %w", err))
	}
	d := &deployment{opts: opts}
	secret, source, err := d.secret()
	if err != nil {
		return err
	}
	mint := auth.MintOptions{Subject: opts.Subject, Tier: tier, TTL: opts.TTL, Now: opts.Now()}
	if mint.Issuer, err = d.setting(opts.Issuer, auth.EnvIssuer); err != nil {
		return err
	}
	aud, err := d.setting(opts.Audience, auth.EnvAudience)
	if err != nil {
		return err
	}
	if aud != "" {
		mint.Audience = []string{aud}
	}
	opts.Env.Logger.Debug("signing token", "secret_from", source, "issuer", mint.Issuer, "audience", aud)
	tok, claims, err := auth.Mint([]byte(secret), mint)
	if err != nil {
		return fmt.Errorf("JWT_SECRET_KEY from %s: %w", source, err)
	}
	if opts.Env.JSON {
		return opts.Env.PrintJSON(Output{Token: tok, Subject: claims.Subject, Tier: string(claims.Tier),
			Issuer: claims.Issuer, Audience: claims.Audience, ExpiresAt: claims.ExpiresAt.UTC()})
	}
	_, err = fmt.Fprintln(opts.Env.IO.Out, tok)
	return err
}

// deployment reads the deployment's settings from where its secret is:
// the environment, or else the env file, read once when first needed.
// A secret from the environment takes the environment's settings only, so
// an env file of another deployment never mixes in.
type deployment struct {
	opts *Options
	path string
	vars map[string]string // nil until read; empty when there is no file
	// secretFromEnv says JWT_SECRET_KEY came from the environment.
	secretFromEnv bool
}

// file returns the env file's variables and its path; err wraps
// fs.ErrNotExist when there is no file.
func (d *deployment) file() (map[string]string, string, error) {
	if d.vars != nil {
		return d.vars, d.path, nil
	}
	if d.path = d.opts.EnvFile; d.path == "" {
		cfg, err := d.opts.Env.Config()
		if err != nil {
			return nil, "", err
		}
		d.path = cfg.Abs(cfg.Local.EnvFile)
	}
	vars, err := envfile.Read(d.path)
	if err != nil {
		return nil, d.path, err
	}
	d.vars = vars
	return vars, d.path, nil
}

// secret returns JWT_SECRET_KEY and where it came from (never the
// value, which must not reach any message).
func (d *deployment) secret() (secret, source string, err error) {
	if s := d.opts.Env.Getenv("JWT_SECRET_KEY"); s != "" {
		d.secretFromEnv = true
		return s, "the environment", nil
	}
	vars, path, err := d.file()
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

// setting returns flag's value if it was given, else key from the
// environment, else (when the secret came from it) from the env file
// (none if there is no file). Call it after secret.
func (d *deployment) setting(flag *string, key string) (string, error) {
	if flag != nil {
		return *flag, nil
	}
	if v := d.opts.Env.Getenv(key); v != "" || d.secretFromEnv {
		return v, nil
	}
	vars, _, err := d.file()
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return vars[key], nil
}

// Local mints a token for subject at tier, valid for ttl, signed with the
// project's own JWT_SECRET_KEY (the environment's, else the env file's)
// and carrying the issuer and audience its gateway requires: how other
// commands reach the local stack's gateway when they were given no token.
// The secret never leaves this process.
func Local(env *cli.Env, subject string, tier auth.Tier, ttl time.Duration) (string, error) {
	d := &deployment{opts: &Options{Env: env}}
	secret, source, err := d.secret()
	if err != nil {
		return "", err
	}
	mint := auth.MintOptions{Subject: subject, Tier: tier, TTL: ttl, Now: time.Now()}
	if mint.Issuer, err = d.setting(nil, auth.EnvIssuer); err != nil {
		return "", err
	}
	aud, err := d.setting(nil, auth.EnvAudience)
	if err != nil {
		return "", err
	}
	if aud != "" {
		mint.Audience = []string{aud}
	}
	tok, _, err := auth.Mint([]byte(secret), mint)
	if err != nil {
		return "", fmt.Errorf("JWT_SECRET_KEY from %s: %w", source, err)
	}
	return tok, nil
}
