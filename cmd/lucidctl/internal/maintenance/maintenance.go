// Package maintenance implements `lucidctl maintenance`: the operator's
// work on deployed hosts (data-chain scrub and compaction, mesh CA
// rotation, chain voters), done through SSH against the services' ports on
// each host's loopback with the operator credential, so that no shell is
// needed in the images and no maintenance endpoint faces the network.
//
// The operator token (LUCID_OPERATOR_TOKEN) leaves lucidctl only as the
// credential derived from it for each service on each host
// (auth.OperatorCredential), the bearer token of the requests to that
// service on that host alone. With the mesh on, the services speak TLS
// with mesh certificates, and each is verified against the mesh's trust
// bundle, itself authenticated by the MAC the controller computes with an
// enrolment token the operator derives from LUCID_MESH_TOKEN.
package maintenance

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deploy"
)

// NewCmd returns the maintenance command.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "maintenance <command>",
		Short: "Scrub and compact the data chain, rotate the mesh CA, change the chain's voters, lift a restore fence",
		Long: `Maintenance of deployed hosts with the operator credential: each command
reaches the services on the host's loopback through SSH, as the Pi itself
sees them, and sends each the credential derived from LUCID_OPERATOR_TOKEN for
it on that host alone as the bearer token. Without
--target it works on the local stack (lucidctl up) of this machine. With the mesh
on, every service is verified by its mesh certificate against the mesh's
trust bundle, which is authenticated with LUCID_MESH_TOKEN.

Both tokens come from the environment or else the operator's env file
(local.env_file of lucid.yaml, by default configs/environment/.env.core).
Progress goes to stderr, the result to stdout (--json for scripts).`,
		Aliases: []string{"maint"},
		Args:    cli.Subcommands,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newScrubCmd(env), newCompactCmd(env), newRotateCACmd(env), newVotersCmd(env), newFenceCmd(env))
	return cmd
}

// Flags choose the hosts and how to reach their services.
type Flags struct {
	fleet.Flags
	// PortOffset is the --port-offset the hosts' stack was rendered with
	// (lucidctl render): 0 on a Pi, which publishes the catalog's ports.
	PortOffset int
	// EnvFile holds the operator's tokens ("": local.env_file).
	EnvFile string
	// set are the flags, to tell a --port-offset 0 given from none.
	set *pflag.FlagSet
}

func (f *Flags) add(fs *pflag.FlagSet) {
	f.set = fs
	f.Flags.Add(fs, "the target or group of lucid.yaml to work on (default: the local stack of lucidctl up)")
	_ = fs.MarkHidden("docker-socket") // fleet's, for the commands that talk to Docker
	fs.IntVar(&f.PortOffset, "port-offset", 0, "the --port-offset the hosts' stack was rendered with (0: the catalog's ports; for the local stack, local.port_offset)")
	fs.StringVar(&f.EnvFile, "env-file", "", "the operator's env file, with LUCID_OPERATOR_TOKEN and LUCID_MESH_TOKEN (default: local.env_file of lucid.yaml)")
}

// session is one host's services, reached through its SSH connection.
type session = hostservices.Session

// Output is the --json result of a maintenance command: each host's
// result or error, and the hosts skipped as unreachable.
type Output[T any] struct {
	Hosts   []HostResult[T] `json:"hosts"`
	Skipped []SkippedHost   `json:"skipped,omitempty"`
}

// HostResult is one host's outcome.
type HostResult[T any] struct {
	Host   string `json:"host"`
	Result *T     `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// SkippedHost is a host that could not be reached (--skip-unreachable).
type SkippedHost struct {
	Host  string `json:"host"`
	Error string `json:"error"`
}

// Audit actions of the maintenance commands.
const (
	actionScrub       = "datachain.scrub"
	actionCompact     = "datachain.compact"
	actionRotateCA    = "mesh.rotate-ca"
	actionVoterAdd    = hostservices.AuditVoterAdd
	actionVoterRemove = hostservices.AuditVoterRemove
	actionVotersList  = "chain.voters.list"
	progressEvery     = 10 * time.Second
	auditWait         = 5 * time.Second // recording an action after an interrupt, which waits for it
	shortRequest      = 30 * time.Second
)

// each connects to the selected hosts and runs fn on all of them at once,
// each with its own session; the hosts' errors come back joined, each
// naming its host. audit is what each host's audit trail records: the
// action, then what it acted on (a voter's node id).
func each[T any](ctx context.Context, env *cli.Env, f *Flags, audit []string, fn func(context.Context, *session) (*T, error)) (*Output[T], error) {
	creds, err := hostservices.ReadCredentials(env, f.EnvFile)
	if err != nil {
		return nil, err
	}
	if f.Target == "" && len(f.Hosts) == 0 {
		if err := f.localOnly(); err != nil {
			return nil, err
		}
		return onLocal(ctx, env, f, creds, fn)
	}
	fl, err := f.Connect(ctx, env)
	if err != nil {
		return nil, err
	}
	defer fl.Close()
	out := &Output[T]{Hosts: make([]HostResult[T], len(fl.Hosts))}
	index := map[string]int{}
	for i, h := range fl.Hosts {
		index[h.Name] = i
		out.Hosts[i].Host = h.Name
	}
	progress := iostreams.NewProgress(env.IO.ErrOut)
	err = fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		s := &session{Host: h.Name, Dial: h.SSH.DialTCP, Offset: f.PortOffset, Creds: creds, Say: progress.Sayer(h.Name + ": "),
			Deployed: hostservices.DeployedOf(h.DeployConfig())}
		defer s.Close()
		res, err := fn(ctx, s)
		err = s.Classify(ctx, err)
		switch aerr := recordMaintenance(ctx, h, audit, err); {
		case aerr == nil:
		case readOnly[audit[0]]:
			// A look changed nothing: a trail that cannot be written (a
			// full disk, a card gone read-only) is said, not failed on,
			// so that the answer still counts (a fence's exit 3).
			s.Say("warning: %v", aerr)
		default:
			// The action stands; the trail not saying so fails the run.
			err = errors.Join(err, aerr)
		}
		hr := &out.Hosts[index[h.Name]]
		hr.Result = res
		if err != nil {
			hr.Error = err.Error()
		}
		return err
	})
	for _, u := range fl.Unreachable {
		out.Skipped = append(out.Skipped, SkippedHost{Host: u.Name, Error: u.Err.Error()})
	}
	if s := fl.SkippedSummary(); s != "" {
		fmt.Fprintln(env.IO.ErrOut, s)
	}
	return out, err
}

// readOnly are the actions that only look.
var readOnly = map[string]bool{actionVotersList: true, actionFenceStatus: true}

// localOnly refuses, for the local stack, the flags that choose and reach
// hosts: silently ignored, they would send the action elsewhere than the
// operator meant.
func (f *Flags) localOnly() error {
	if f.set == nil {
		return nil
	}
	for _, name := range []string{"skip-unreachable", "identity", "known-hosts", "accept-new-host-key", "no-agent"} {
		if fl := f.set.Lookup(name); fl != nil && fl.Changed {
			return cli.Usage(fmt.Errorf("--%s needs --target (a target or group of lucid.yaml); without it the command works on the local stack", name))
		}
	}
	return nil
}

// onLocal runs fn on the local stack (lucidctl up) of this machine: its
// services on the loopback, at --port-offset or else local.port_offset.
// The local stack keeps no audit trail.
func onLocal[T any](ctx context.Context, env *cli.Env, f *Flags, creds *hostservices.Credentials, fn func(context.Context, *session) (*T, error)) (*Output[T], error) {
	cfg, err := env.Config()
	if err != nil {
		return nil, err
	}
	offset := f.PortOffset
	if f.set == nil || !f.set.Changed("port-offset") {
		offset = cfg.Local.PortOffset // --port-offset 0 names the stack at 0
	}
	var d net.Dialer
	s := &session{Host: cfg.Local.Name, Offset: offset, Creds: creds,
		Dial: func(addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		Say:  iostreams.NewProgress(env.IO.ErrOut).Sayer(auth.LocalHost + ": "),
	}
	defer s.Close()
	res, err := fn(ctx, s)
	err = s.Classify(ctx, err)
	out := &Output[T]{Hosts: []HostResult[T]{{Host: auth.LocalHost, Result: res}}}
	if err != nil {
		out.Hosts[0].Error = err.Error()
	}
	return out, err
}

// recordMaintenance records one host's maintenance action and its outcome
// in the host's audit trail (pkg/deploy's): who ran which action (audit:
// the action and its arguments), and the error if it failed.
func recordMaintenance(ctx context.Context, h *fleet.Host, audit []string, err error) error {
	d, derr := deploy.New(h.DeployConfig())
	if derr != nil {
		return fmt.Errorf("audit trail: %w", derr)
	}
	defer func() { _ = d.Close() }()
	e := deploy.AuditEntry{Action: deploy.AuditMaintenance, Args: audit}
	if err != nil {
		e.Error = err.Error()
	}
	// An interrupt ends the action, not its record: what was done on the
	// host (a rotation, a compaction) is on the trail all the same.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditWait)
	defer cancel()
	return d.Audit(actx, e)
}

// fingerprint is the hex SHA-256 of a certificate, as the mesh reports its
// root.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// ticker says every progressEvery that what is still running, until the
// returned stop is called.
func ticker(s *session, what string) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s.Say("still %s (%s)", what, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done) }
}
