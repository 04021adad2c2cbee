// Package operate implements the commands that operate deployed hosts:
// `lucidctl restart|stop|start` (services of the current release, health
// gated, under the deploy lock), `lucidctl prune` (old releases, images,
// layers and containers no kept release needs) and `lucidctl audit` (the
// hosts' audit trail). Every change is recorded in the host's audit log.
package operate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/quorum"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// NewCmds returns restart, stop, start, prune and audit.
func NewCmds(env *cli.Env) []*cobra.Command {
	return []*cobra.Command{
		newServiceCmd(env, deploy.AuditRestart), newServiceCmd(env, deploy.AuditStop), newServiceCmd(env, deploy.AuditStart),
		newPruneCmd(env), newAuditCmd(env),
	}
}

// unreachableOutput is a host --skip-unreachable skipped, in --json.
type unreachableOutput struct {
	Target string `json:"target"`
	Error  string `json:"error"`
}

func unreachable(fl *fleet.Fleet) []unreachableOutput {
	out := []unreachableOutput{}
	for _, u := range fl.Unreachable {
		out = append(out, unreachableOutput{Target: u.Name, Error: u.Err.Error()})
	}
	return out
}

// eventPrinter shows the steps on stderr, one line each.
type eventPrinter struct{ events *iostreams.Progress }

func newEventPrinter(w io.Writer) *eventPrinter {
	return &eventPrinter{events: iostreams.NewProgress(w)}
}

// Event prints e.
func (p *eventPrinter) Event(e deploy.Event) {
	p.events.Event(e.Target, string(e.Step), string(e.Status), e.Message)
}

var _ deploy.Reporter = (*eventPrinter)(nil)

// skipped says on stderr which hosts were skipped.
func skipped(env *cli.Env, fl *fleet.Fleet) {
	if s := fl.SkippedSummary(); s != "" {
		fmt.Fprintln(env.IO.ErrOut, s)
	}
}

// ServiceOptions are the inputs of `lucidctl restart|stop|start`.
type ServiceOptions struct {
	Env           *cli.Env
	Action        deploy.AuditAction
	Fleet         fleet.Flags
	Services      []string
	Force         bool
	HealthTimeout time.Duration
	LockWait      time.Duration
	// ForceQuorum takes a voter's engine down even when its Raft cluster
	// loses its quorum without it.
	ForceQuorum bool
}

// serviceOutput is `lucidctl restart|stop|start --json`.
type serviceOutput struct {
	Hosts       []*deploy.ServiceResult `json:"hosts"`
	Unreachable []unreachableOutput     `json:"unreachable"`
}

func newServiceCmd(env *cli.Env, action deploy.AuditAction) *cobra.Command {
	opts := &ServiceOptions{Env: env, Action: action}
	what := map[deploy.AuditAction]string{
		deploy.AuditRestart: "Restart services of the current release on the hosts, and wait until they are healthy",
		deploy.AuditStop:    "Stop services of the current release on the hosts",
		deploy.AuditStart:   "Start stopped services of the current release on the hosts, and wait until they are healthy",
	}[action]
	long := what + `.

SERVICE is a service of the catalog (` + strings.Join(catalog.Names(), ", ") + `); without
one, every service (in start order; stop goes in reverse). The containers of
the current release are found by their compose labels and changed through the
host's Docker Engine over SSH, under the host's deploy lock. A group's hosts go
one at a time, stopping at the first that fails. Each action is recorded in
the host's audit log.`
	if action != deploy.AuditStart {
		long += `

A restart or stop that takes the engine down is refused, as a deploy is, when
the engine is a Raft voter whose cluster would lose its quorum without it (all
the hosts of its cluster in lucid.yaml are read to judge, under the host's
lock); --force-quorum takes it down anyway, and the chain then stops until the
quorum is back.`
	}
	switch action {
	case deploy.AuditRestart:
		long += `

A restart is gated like a deploy: the services must be running and healthy
within --health-timeout (and the gateway answer, when it is restarted). A
service others depend on is said on stderr first; they keep running.`
	case deploy.AuditStop:
		long += `

Stopping a service that running services depend on (the catalog's DependsOn
and After) is refused with the list of them, unless --force; stop them too, or
name them as well.`
	case deploy.AuditStart:
		long += `

A start is gated like a deploy: the services must be running and healthy
within --health-timeout.`
	}
	cmd := &cobra.Command{
		Use:       string(action) + " --target TARGET|GROUP [SERVICE...]",
		Short:     what,
		Long:      long,
		Example:   fmt.Sprintf("  lucidctl %[1]s --target pi gateway\n  lucidctl %[1]s --target fleet --hosts pi2 engine\n  lucidctl %[1]s --target fleet --skip-unreachable", action),
		Args:      cli.OnlyValidArgs,
		ValidArgs: catalog.Names(),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Services = args
			return runService(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target or group of lucid.yaml to act on (required)")
	if action == deploy.AuditStop {
		cmd.Flags().BoolVar(&opts.Force, "force", false, "stop even when running services depend on it")
	} else {
		cmd.Flags().DurationVar(&opts.HealthTimeout, "health-timeout", 3*time.Minute, "how long the services get to become healthy")
	}
	if action != deploy.AuditStart {
		cmd.Flags().BoolVar(&opts.ForceQuorum, "force-quorum", false, "take a voter's engine down even when its Raft cluster loses its quorum without it (the chain stops until the quorum is back)")
	}
	cmd.Flags().DurationVar(&opts.LockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	return cli.SupportsJSON(cmd)
}

func runService(ctx context.Context, opts *ServiceOptions) error {
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	skipped(opts.Env, fl)
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	p := newEventPrinter(opts.Env.IO.ErrOut)
	out := serviceOutput{Hosts: []*deploy.ServiceResult{}, Unreachable: unreachable(fl)}
	var gate *quorum.Gate
	if takesEngineDown(opts.Action, opts.Services) {
		acting := make([]deploy.Config, 0, len(fl.Hosts))
		for _, h := range fl.Hosts {
			acting = append(acting, h.DeployConfig())
		}
		gate = quorum.NewGate(ctx, quorum.GateOptions{
			Config: cfg, Acting: acting, DockerSocket: opts.Fleet.DockerSocket, Force: opts.ForceQuorum, Reporter: p,
			Dial: func(ctx context.Context, t projectconfig.Target) (*sshx.Client, error) {
				return opts.Fleet.Dial(ctx, opts.Env, t)
			},
			OperatorToken: opts.Env.OperatorToken("the engines' consensus status cannot be read, so a cluster's quorum is not checked"),
		})
		defer gate.Close()
	}
	var runErr error
	for _, h := range fl.Hosts {
		c := h.DeployConfig()
		c.ImageName, c.Tag = cfg.Images.Name, cfg.Images.Tag
		c.HealthTimeout, c.LockWait, c.Reporter = opts.HealthTimeout, opts.LockWait, p
		if gate != nil {
			c.BeforeUp = gate.Check(h.Name)
		}
		res, err := serviceOn(ctx, c, opts)
		if res != nil {
			out.Hosts = append(out.Hosts, res)
			if !opts.Env.JSON {
				fmt.Fprintf(opts.Env.IO.Out, "%s: %s %s (release %s)\n", res.Target, pastTense(res.Action), strings.Join(res.Services, ", "), res.Release)
			}
			if res.AuditError != "" {
				err = errors.Join(err, fmt.Errorf("%s: %s", res.Target, res.AuditError))
			}
		}
		if err != nil {
			var de *deploy.DependantsError
			if errors.As(err, &de) {
				err = cli.WithHint(err, "stop "+strings.Join(de.Dependants, " ")+" too, or add --force")
			}
			runErr = err
			break // the next hosts stay as they are
		}
	}
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(out); err != nil {
			return errors.Join(runErr, err)
		}
	}
	return runErr
}

func serviceOn(ctx context.Context, c deploy.Config, opts *ServiceOptions) (*deploy.ServiceResult, error) {
	d, err := deploy.New(c)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	so := deploy.ServiceOptions{Services: opts.Services, Force: opts.Force}
	switch opts.Action {
	case deploy.AuditStop:
		return d.Stop(ctx, so)
	case deploy.AuditStart:
		return d.Start(ctx, so)
	}
	return d.Restart(ctx, so)
}

func pastTense(a deploy.AuditAction) string {
	switch a {
	case deploy.AuditStop:
		return "stopped"
	case deploy.AuditStart:
		return "started"
	}
	return "restarted"
}

// PruneOptions are the inputs of `lucidctl prune`.
type PruneOptions struct {
	Env      *cli.Env
	Fleet    fleet.Flags
	Keep     int
	DryRun   bool
	LockWait time.Duration
}

// pruneOutput is `lucidctl prune --json`.
type pruneOutput struct {
	Hosts       []*deploy.PruneResult `json:"hosts"`
	TotalBytes  int64                 `json:"total_bytes"`
	Unreachable []unreachableOutput   `json:"unreachable"`
}

func newPruneCmd(env *cli.Env) *cobra.Command {
	opts := &PruneOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "prune --target TARGET|GROUP [--keep N] [--dry-run]",
		Short: "Free disk on the hosts: old releases, unused Lucid images and layers, stopped Lucid containers",
		Long: `Free disk on each host, under its deploy lock, and say what each item frees:

  - releases beyond the newest --keep (default 5); the current release and the
    previous one that went live (what rollback returns to) always stay;
  - Lucid images no kept release uses (kept by image ID, whatever their tags);
  - dangling Lucid image layers an hour old or more (a younger one may be a
    build's step in progress);
  - stopped Lucid containers of releases that are not current (a service
    stopped with lucidctl stop stays, for lucidctl start).

An image's bytes are those no other image shares; the total adds them up.
--dry-run lists and removes nothing. Hosts of a group are pruned in parallel.
Each prune is recorded in the host's audit log.`,
		Example: `  lucidctl prune --target pi --dry-run
  lucidctl prune --target pi --keep 2
  lucidctl prune --target fleet --skip-unreachable --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Keep < 0 {
				return cli.Usage(fmt.Errorf("--keep %d: keep at least 1 release", opts.Keep))
			}
			if cmd.Flags().Changed("keep") && opts.Keep == 0 {
				return cli.Usage(errors.New("--keep 0: the current release always stays; keep at least 1"))
			}
			return runPrune(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target or group of lucid.yaml to prune (required)")
	cmd.Flags().IntVar(&opts.Keep, "keep", 0, "how many of the newest releases stay (default 5)")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "list what would be removed, and remove nothing")
	cmd.Flags().DurationVar(&opts.LockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	return cli.SupportsJSON(cmd)
}

func runPrune(ctx context.Context, opts *PruneOptions) error {
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	skipped(opts.Env, fl)
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	p := newEventPrinter(opts.Env.IO.ErrOut)
	results := make([]*deploy.PruneResult, len(fl.Hosts))
	idx := map[string]int{}
	for i, h := range fl.Hosts {
		idx[h.Name] = i
	}
	runErr := fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		c := h.DeployConfig()
		c.ImageName, c.Tag, c.LockWait, c.Reporter = cfg.Images.Name, cfg.Images.Tag, opts.LockWait, p
		d, err := deploy.New(c)
		if err != nil {
			return err
		}
		defer d.Close()
		res, err := d.Prune(ctx, deploy.PruneOptions{Keep: opts.Keep, DryRun: opts.DryRun})
		results[idx[h.Name]] = res
		if err == nil && res.AuditError != "" {
			err = errors.New(res.AuditError)
		}
		return err
	})
	out := pruneOutput{Hosts: []*deploy.PruneResult{}, Unreachable: unreachable(fl)}
	for _, r := range results {
		if r != nil {
			out.Hosts = append(out.Hosts, r)
			out.TotalBytes += r.TotalBytes
		}
	}
	if opts.Env.JSON {
		return errors.Join(runErr, opts.Env.PrintJSON(out))
	}
	iostreams.SafeStrings(&out) // names and errors a host gave, for a terminal
	tw := tabwriter.NewWriter(opts.Env.IO.Out, 0, 4, 2, ' ', 0)
	verb := "FREED"
	if opts.DryRun {
		verb = "WOULD FREE"
	}
	fmt.Fprintf(tw, "TARGET\tKIND\tNAME\t%s\t\n", verb)
	for _, r := range out.Hosts {
		for _, it := range r.Items {
			note := ""
			if it.Error != "" {
				note = "stays: " + it.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Target, it.Kind, it.Name, human(it.Bytes), note)
		}
	}
	fmt.Fprintf(tw, "total\t\t\t%s\t\n", human(out.TotalBytes))
	return errors.Join(runErr, tw.Flush())
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// AuditOptions are the inputs of `lucidctl audit`.
type AuditOptions struct {
	Env   *cli.Env
	Fleet fleet.Flags
	Since string
	// Now is the clock --since counts back from (default time.Now).
	Now func() time.Time
}

// auditOutput is `lucidctl audit --json`.
type auditOutput struct {
	Entries     []deploy.AuditEntry `json:"entries"`
	Unreachable []unreachableOutput `json:"unreachable"`
}

func newAuditCmd(env *cli.Env) *cobra.Command {
	opts := &AuditOptions{Env: env, Now: time.Now}
	cmd := &cobra.Command{
		Use:   "audit --target TARGET|GROUP [--since 24h|RFC3339]",
		Short: "Show the hosts' audit trail: who deployed, rolled back, restarted or pruned what, and when",
		Long: `Read the audit log of each host (<deploy dir>/audit.log, one JSON line per
deploy, rollback, restart, stop, start, maintenance command and prune) and
print the entries, oldest first: time, target, who (local user@machine and
the SSH key's fingerprint), action, release, result. Hosts of a group are read
in parallel. --since takes a duration back from now (24h, 168h) or an RFC 3339
time.`,
		Example: `  lucidctl audit --target pi
  lucidctl audit --target fleet --since 168h
  lucidctl audit --target pi --since 2026-12-01T00:00:00Z --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAudit(cmd.Context(), opts)
		},
	}
	opts.Fleet.Add(cmd.Flags(), "the target or group of lucid.yaml to read (required)")
	cmd.Flags().StringVar(&opts.Since, "since", "", "only entries since then: a duration back from now (24h) or an RFC 3339 time")
	return cli.SupportsJSON(cmd)
}

// parseSince reads --since.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, cli.Usage(fmt.Errorf("--since %s: a duration back from now is positive", s))
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, cli.Usage(fmt.Errorf("--since %q: want a duration (24h) or an RFC 3339 time (2026-12-01T00:00:00Z)", s))
	}
	return t, nil
}

func runAudit(ctx context.Context, opts *AuditOptions) error {
	since, err := parseSince(opts.Since, opts.Now())
	if err != nil {
		return err
	}
	fl, err := opts.Fleet.Connect(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer fl.Close()
	skipped(opts.Env, fl)
	var (
		mu      sync.Mutex
		entries []deploy.AuditEntry
	)
	runErr := fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		d, err := deploy.New(h.DeployConfig())
		if err != nil {
			return err
		}
		defer d.Close()
		es, err := d.AuditLog(ctx, since)
		mu.Lock()
		entries = append(entries, es...)
		mu.Unlock()
		return err
	})
	// Oldest first across the hosts; within a host, the log's order.
	sortEntries(entries)
	if opts.Env.JSON {
		if entries == nil {
			entries = []deploy.AuditEntry{}
		}
		return errors.Join(runErr, opts.Env.PrintJSON(auditOutput{Entries: entries, Unreachable: unreachable(fl)}))
	}
	// A host writes its own audit log: a newline or a tab in a field
	// would add a row, or a column, to the table.
	iostreams.SafeStrings(entries)
	tw := tabwriter.NewWriter(opts.Env.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTARGET\tWHO\tKEY\tACTION\tSERVICES\tRELEASE\tRESULT\t")
	for _, e := range entries {
		result := string(e.Result)
		if e.Error != "" {
			result += ": " + e.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s@%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.RFC3339), e.Target, e.User, e.Host, e.Key,
			e.Action, dash(strings.Join(e.Services, ",")), dash(e.Release), result)
	}
	return errors.Join(runErr, tw.Flush())
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sortEntries orders entries by time, keeping each log's order for equal
// times.
func sortEntries(es []deploy.AuditEntry) {
	slices.SortStableFunc(es, func(a, b deploy.AuditEntry) int { return a.Time.Compare(b.Time) })
}

// takesEngineDown reports whether a restart or stop of services takes the
// engine down (none named is every service).
func takesEngineDown(action deploy.AuditAction, services []string) bool {
	return action != deploy.AuditStart && (len(services) == 0 || slices.Contains(services, catalog.EngineService))
}
