package stack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/observe"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/supervise"
)

// StatusOptions are the inputs of `lucidctl status`.
type StatusOptions struct {
	Env *cli.Env
	// PortOffset names the stack; nil takes local.port_offset of lucid.yaml.
	PortOffset *int
	// Fleet, with a --target, shows deployed hosts instead of the local
	// stack (package observe).
	Fleet fleet.Flags
}

func newStatusCmd(env *cli.Env) *cobra.Command {
	opts := &StatusOptions{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the state of the local stack, or of deployed hosts",
		Long: `Show each service of the local stack: its state, pid, restarts and URL, and
how the services are discovered: "consul" with a supervised Consul agent,
"static" (fixed addresses) without one, and the gateway's public
certificates (their expiry from its metrics, a warning under 14 days) when
it serves HTTPS. --port-offset names the stack.

With --target (a target or group of lucid.yaml), show the deployed hosts
instead, read over SSH in parallel: the current release, each container's
state, health, restarts, uptime and image, the host's disk, memory, load,
Docker version and clock skew, and what the services report (chain height
and newest block; the engine's Raft role, term, applied index and commit
lag, how many entries it has yet to apply that the leader read in the same
run has applied; anchoring queue, data-chain size, mesh certificate expiry,
the gateway's public certificates' expiry). A figure that cannot be read is
shown as "unknown (why)". The engine's and the data chain's figures need
the operator token: LUCID_OPERATOR_TOKEN, else the operator's env file
(local.env_file of lucid.yaml).

When the engines of the hosts form one Raft cluster (a configuration of
more than one server), a verdict follows the hosts: the voters and the host
of each, how many are healthy (host healthy, engine leader or follower),
quorum (a majority of the voters healthy), the leader and its host, the
newest block's age across the hosts, and an error line for each sign of a
split (two engines leading in one term, engines naming different leaders,
a leader of an older term, a voter on a chain of its own). Select every
host of the cluster: with voters not read, the quorum may be "unknown".
Hosts each with their own one-voter chain get no verdict.

Exit status: 0 when the stack runs and every service is ready, 3 when it is
not running or a service is not ready (a ready one whose /health does not
answer within 2 s is shown "unresponsive"). With --target: 0 when every host is
healthy, 3 when a container is not running or not healthy, a host has no
current release, a host was skipped as unreachable, or the Raft cluster has
lost its quorum, has no leader or shows a sign of a split; 4 when a host cannot be reached
without --skip-unreachable.`,
		Example: `  lucidctl status
  lucidctl status --json
  lucidctl status --port-offset 1000
  lucidctl status --target pi
  lucidctl status --target fleet --skip-unreachable --json`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Fleet.Target != "" {
				if cmd.Flags().Changed("port-offset") {
					return cli.Usage(errors.New("--port-offset names a local stack; it does not go with --target"))
				}
				return observe.RunStatus(cmd.Context(), &observe.StatusOptions{Env: opts.Env, Fleet: &opts.Fleet})
			}
			if err := localOnly(cmd); err != nil {
				return err
			}
			opts.PortOffset = givenOffset(cmd, offset)
			return runStatus(cmd.Context(), opts)
		},
	}
	portOffsetFlag(cmd, &offset, "the port offset of the stack to show (default: local.port_offset of lucid.yaml)")
	opts.Fleet.Add(cmd.Flags(), "show these deployed hosts (a target or group of lucid.yaml) instead of the local stack")
	fleet.Complete(cmd, env)
	return cli.SupportsJSON(cmd)
}

// statusDoc is `status --json` of the local stack: its state, and the
// gateway's public certificates when it serves TLS (GatewayTLSError
// says why they could not be read).
type statusDoc struct {
	*stackState
	GatewayTLS      *deploy.GatewayTLS `json:"gateway_tls,omitempty"`
	GatewayTLSError string             `json:"gateway_tls_error,omitempty"`
}

func runStatus(ctx context.Context, opts *StatusOptions) error {
	l, err := stackLayout(opts.Env, opts.PortOffset)
	if err != nil {
		return err
	}
	st, err := readState(l)
	if errors.Is(err, errNoState) {
		st = &stackState{}
	} else if err != nil {
		return err
	}
	st = current(st, supervisorRunning(l))
	if st.Running {
		checkAnswering(ctx, st)
	}
	doc := statusDoc{stackState: st}
	for _, s := range st.Services {
		if st.Running && s.Name == catalog.GatewayService && s.State == supervise.StateReady && s.URL != "" {
			if g, err := gatewayTLS(ctx, s.URL); err != nil {
				doc.GatewayTLSError = err.Error()
			} else {
				doc.GatewayTLS = g
			}
		}
	}

	if opts.Env.JSON {
		if st.Services == nil {
			st.Services = []serviceState{}
		}
		if err := opts.Env.PrintJSON(doc); err != nil {
			return err
		}
	} else {
		printTable(opts.Env, st)
		if st.Running {
			fmt.Fprintln(opts.Env.IO.Out, discoveryLine(st.Discovery))
			if doc.GatewayTLSError != "" {
				fmt.Fprintln(opts.Env.IO.Out, "gateway tls: unknown ("+doc.GatewayTLSError+")")
			} else {
				observe.PrintGatewayTLS(opts.Env.IO.Out, opts.Env.IO.OutStyles(), doc.GatewayTLS)
			}
		}
	}
	if !st.Running {
		if !opts.Env.JSON {
			fmt.Fprintln(opts.Env.IO.ErrOut, "the local stack is not running; `lucidctl up` starts it")
			if h := otherStacksHint(l); h != "" {
				fmt.Fprintln(opts.Env.IO.ErrOut, h)
			}
		}
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	for _, s := range st.Services {
		if s.State != supervise.StateReady {
			return &cli.SilentError{Code: cli.ExitProblems}
		}
	}
	return nil
}

// stateUnresponsive is status's word for a service the supervisor holds
// ready whose /health does not answer now: the supervisor judges
// readiness once, as a service starts, and a process that hangs (stopped,
// deadlocked, swapping) still runs.
const stateUnresponsive supervise.State = "unresponsive"

// answerWithin bounds each service's /health check in status.
const answerWithin = 2 * time.Second

// checkAnswering asks every ready service's /health, together, and marks
// one that does not answer within answerWithin unresponsive, saying why.
// Any HTTP answer will do (Consul's agent has no /health): the question
// is whether the process answers, not what its checks say.
func checkAnswering(ctx context.Context, st *stackState) {
	ctx, cancel := context.WithTimeout(ctx, answerWithin)
	defer cancel()
	var wg sync.WaitGroup
	for i := range st.Services {
		s := &st.Services[i]
		if s.State != supervise.StateReady || s.URL == "" {
			continue
		}
		wg.Go(func() {
			if err := supervise.HTTPProbeWithin(s.URL+"/health", answerWithin)(ctx); err != nil && !errors.As(err, new(*api.Error)) {
				s.State, s.Problem = stateUnresponsive, "/health: "+err.Error()
			}
		})
	}
	wg.Wait()
}

// localOnly refuses the host-selection flags without --target: they
// would otherwise be silently ignored by the local stack's command.
func localOnly(cmd *cobra.Command) error {
	for _, name := range []string{"hosts", "skip-unreachable", "docker-socket", "identity", "known-hosts", "accept-new-host-key", "no-agent"} {
		if cmd.Flags().Changed(name) {
			return cli.Usage(fmt.Errorf("--%s needs --target (a target or group of lucid.yaml)", name))
		}
	}
	return nil
}

// discoveryLine says how the stack's services are discovered, under the
// status table.
func discoveryLine(d discoveryMode) string {
	switch d {
	case discoveryConsul:
		return "discovery: consul"
	case discoveryStatic:
		return "discovery: static (no Consul agent; the gateway uses fixed addresses)"
	}
	return "discovery: unknown"
}

// current corrects a state file whose supervisor has died without saying
// so (kill -9): its children died with it, so nothing is running.
func current(st *stackState, running bool) *stackState {
	if st.Running && !running {
		st.Running = false
		for i := range st.Services {
			s := &st.Services[i].Status
			if s.State != supervise.StateFailed {
				s.State, s.PID, s.NextStart = supervise.StateStopped, 0, nil
			}
		}
	}
	return st
}

// printTable writes the services as a table to stdout. Cells are padded
// before they are colored, so escape codes do not upset the columns.
func printTable(env *cli.Env, st *stackState) {
	if st == nil || len(st.Services) == 0 {
		return
	}
	styles := env.IO.OutStyles()
	rows := [][]string{{"SERVICE", "STATE", "PID", "RESTARTS", "SINCE", "URL", "LAST EXIT"}}
	for _, s := range st.Services {
		pid := "-"
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
		}
		rows = append(rows, []string{s.Name, string(s.State), pid, fmt.Sprint(s.Restarts), ago(s.Since), s.URL, s.LastExit})
	}
	styles.Table(env.IO.Out, rows, func(col int, cell string) lipgloss.Style {
		if col == 1 {
			return stateStyle(styles, supervise.State(cell))
		}
		return lipgloss.NewStyle()
	})
	for _, s := range st.Services {
		if s.Problem != "" {
			fmt.Fprintf(env.IO.Out, "%s is %s: %s\n", s.Name, s.State, s.Problem)
		}
	}
}

func stateStyle(styles *iostreams.Styles, s supervise.State) lipgloss.Style {
	switch s {
	case supervise.StateReady:
		return styles.Success
	case supervise.StateFailed, stateUnresponsive:
		return styles.Error
	case supervise.StateBackoff, supervise.StateStarting, supervise.StateWaiting:
		return styles.Warning
	}
	return styles.Dim
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	default:
		return t.Local().Format("Jan 2 15:04")
	}
}
