package cli

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// SSHFlags are the flags of every command that reaches a lucid.yaml target
// over SSH (deploy, rollback, releases, bench, validate phase2), so that a
// hint naming one of them holds for all.
type SSHFlags struct {
	Identities []string
	KnownHosts string
	AcceptNew  bool
	NoAgent    bool
}

// Add registers the flags.
func (f *SSHFlags) Add(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&f.Identities, "identity", "i", nil, "private key file to offer (repeatable; default: ~/.ssh/config, then ~/.ssh/id_*)")
	fs.StringVar(&f.KnownHosts, "known-hosts", "", "known_hosts file (default ~/.ssh/known_hosts)")
	fs.BoolVar(&f.AcceptNew, "accept-new-host-key", false, "trust and record the key of a host not yet in known_hosts (a changed key is always refused)")
	fs.BoolVar(&f.NoAgent, "no-agent", false, "do not use ssh-agent")
}

// Dial connects to a target; SSH failures exit 4.
func (f *SSHFlags) Dial(ctx context.Context, env *Env, t projectconfig.Target) (*sshx.Client, error) {
	c, err := sshx.Dial(ctx, sshx.Target{Host: t.Host, Port: t.Port, User: t.User}, sshx.Options{
		KeyFiles: f.Identities, KnownHosts: f.KnownHosts, AcceptNewHostKey: f.AcceptNew, NoAgent: f.NoAgent, Getenv: env.Getenv,
	})
	if err != nil {
		return nil, Auth(err)
	}
	return c, nil
}
