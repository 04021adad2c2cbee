// Package fleet picks the hosts a remote command runs on (a target or a
// group of lucid.yaml, narrowed by --hosts) and connects to them in
// parallel over SSH, so that one dead Pi is said once, plainly, and with
// --skip-unreachable does not stop the rest of its group.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// Flags are the host-selection and connection flags of every command that
// works on deployed hosts.
type Flags struct {
	cli.SSHFlags
	// Target names a target or a group of lucid.yaml.
	Target string
	// Hosts keeps only these members of the group.
	Hosts []string
	// SkipUnreachable goes on with the hosts that answer.
	SkipUnreachable bool
	// DockerSocket is the Engine's socket on the hosts.
	DockerSocket string
}

// Add registers the flags. targetHelp says what --target means to the
// command (for status and logs, that it switches from the local stack).
func (f *Flags) Add(fs *pflag.FlagSet, targetHelp string) {
	f.SSHFlags.Add(fs)
	fs.StringVar(&f.Target, "target", "", targetHelp)
	fs.StringSliceVar(&f.Hosts, "hosts", nil, "only these members of the --target group (comma-separated)")
	fs.BoolVar(&f.SkipUnreachable, "skip-unreachable", false, "go on with the hosts that answer, and name the ones that did not")
	fs.StringVar(&f.DockerSocket, "docker-socket", "/var/run/docker.sock", "the Docker Engine's socket on the hosts")
}

// Names resolves --target and --hosts to target names, in lucid.yaml's
// order. A mistake in either is a usage error.
func (f *Flags) Names(cfg *projectconfig.Config) ([]string, error) {
	if f.Target == "" {
		return nil, cli.Usage(errors.New("--target is required: a target or group of " + projectconfig.DefaultFile))
	}
	names, err := cfg.Resolve(f.Target)
	if err != nil {
		return nil, cli.Usage(err)
	}
	if len(f.Hosts) == 0 {
		return names, nil
	}
	for _, h := range f.Hosts {
		if !slices.Contains(names, h) {
			return nil, cli.Usage(fmt.Errorf("--hosts: %q is not a member of %q (members: %s)", h, f.Target, strings.Join(names, ", ")))
		}
	}
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !slices.Contains(f.Hosts, n) }), nil
}

// Host is one connected host.
type Host struct {
	Name   string
	Target projectconfig.Target
	SSH    *sshx.Client
	// DockerSocket is the Engine's socket there.
	DockerSocket string
}

// DeployConfig is the pkg/deploy configuration of this host, for the
// caller to complete.
func (h *Host) DeployConfig() deploy.Config {
	return deploy.Config{Name: h.Name, SSH: h.SSH, Dir: h.Target.Dir, Project: h.Target.Project, DockerSocket: h.DockerSocket}
}

// Unreachable is a host that could not be connected to.
type Unreachable struct {
	Name string
	Err  error
}

// Fleet is the hosts a command runs on: those connected, in lucid.yaml's
// order, and those that could not be reached.
type Fleet struct {
	Hosts       []*Host
	Unreachable []Unreachable
}

// Close closes every connection.
func (f *Fleet) Close() {
	for _, h := range f.Hosts {
		_ = h.SSH.Close() // nothing was left unsent: each command reported its own outcome
	}
}

// One is the single host the flags name, for a command that acts on one
// host's own state (why says what that is); a group of several is a usage
// error that names them.
func (f *Flags) One(cfg *projectconfig.Config, why string) (string, error) {
	names, err := f.Names(cfg)
	if err != nil {
		return "", err
	}
	if len(names) != 1 {
		return "", cli.Usage(fmt.Errorf("--target %s names %d hosts (%s): %s; pick one with --hosts NAME", f.Target, len(names), strings.Join(names, ", "), why))
	}
	return names[0], nil
}

// Connect dials every selected host at once. An unreachable host fails
// the command (exit 4, naming every host that failed) unless
// --skip-unreachable is given; then it is listed in Unreachable, and only
// when no host answers at all is that an error.
func (f *Flags) Connect(ctx context.Context, env *cli.Env) (*Fleet, error) {
	cfg, err := env.Config()
	if err != nil {
		return nil, err
	}
	names, err := f.Names(cfg)
	if err != nil {
		return nil, err
	}
	hosts := make([]*Host, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		t, err := cfg.Target(name)
		if err != nil {
			return nil, cli.Usage(err)
		}
		wg.Go(func() {
			c, err := f.Dial(ctx, env, t)
			if err != nil {
				errs[i] = err
				return
			}
			hosts[i] = &Host{Name: name, Target: t, SSH: c, DockerSocket: f.DockerSocket}
		})
	}
	wg.Wait()
	fl := &Fleet{}
	var failed []error
	refused := false // a host that answered and was refused, or refused us
	for i, name := range names {
		if errs[i] != nil {
			fl.Unreachable = append(fl.Unreachable, Unreachable{Name: name, Err: errs[i]})
			failed = append(failed, fmt.Errorf("%s: %w", name, errs[i]))
			refused = refused || !unreachable(errs[i])
			continue
		}
		fl.Hosts = append(fl.Hosts, hosts[i])
	}
	switch {
	case len(failed) == 0:
		return fl, nil
	case f.SkipUnreachable && len(fl.Hosts) > 0 && !refused:
		return fl, nil
	}
	fl.Close()
	err = errors.Join(failed...)
	switch {
	case f.SkipUnreachable && refused:
		err = cli.WithHint(err, "--skip-unreachable skips a host that cannot be reached, never one whose key or login was refused")
	case len(names) > 1 && !f.SkipUnreachable:
		err = cli.WithHint(err, "--skip-unreachable goes on with the hosts that answer")
	}
	return nil, cli.Auth(err)
}

// unreachable reports whether a dial failed for want of the host (off,
// no route, sshd down or not answering, a reset), which --skip-unreachable
// skips: anything but a refusal. An unknown or changed host key, or a
// refused login, is something else, a host that may not be the one it
// says or a credential that is wrong, and skipping it would hide that
// behind exit 0.
func unreachable(err error) bool {
	return !errors.Is(err, sshx.ErrHostKeyChanged) && !errors.Is(err, sshx.ErrUnknownHostKey) && !errors.Is(err, sshx.ErrAuth)
}

// Each runs fn on every connected host at once and returns the hosts'
// errors joined, each naming its host.
func (f *Fleet) Each(ctx context.Context, fn func(ctx context.Context, h *Host) error) error {
	errs := make([]error, len(f.Hosts))
	var wg sync.WaitGroup
	for i, h := range f.Hosts {
		wg.Go(func() {
			if err := fn(ctx, h); err != nil {
				errs[i] = fmt.Errorf("%s: %w", h.Name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SkippedSummary is the line that names the hosts skipped as unreachable,
// or "" when none was.
func (f *Fleet) SkippedSummary() string {
	if len(f.Unreachable) == 0 {
		return ""
	}
	var parts []string
	for _, u := range f.Unreachable {
		parts = append(parts, u.Name+" ("+u.Err.Error()+")")
	}
	return fmt.Sprintf("skipped %d unreachable host(s): %s", len(f.Unreachable), strings.Join(parts, "; "))
}

// Complete registers the shell completions of --target (the targets and
// groups of lucid.yaml) and --hosts (the members of the --target group).
func Complete(cmd *cobra.Command, env *cli.Env) {
	_ = cmd.RegisterFlagCompletionFunc("target", env.CompleteTargets)
	_ = cmd.RegisterFlagCompletionFunc("hosts", env.CompleteGroupMembers)
}
