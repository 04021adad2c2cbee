package stack

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/supervise"
)

// StatusOptions are the inputs of `lucidctl status`.
type StatusOptions struct {
	Env *cli.Env
	// PortOffset names the stack; nil takes local.port_offset of lucid.yaml.
	PortOffset *int
}

func newStatusCmd(env *cli.Env) *cobra.Command {
	opts := &StatusOptions{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the state of the local stack",
		Long: `Show each service of the local stack: its state, pid, restarts and URL, and
how the services are discovered: "consul" with a supervised Consul agent,
"static" (fixed addresses) without one. --port-offset names the stack.

Exit status: 0 when the stack runs and every service is ready, 3 when it is
not running or a service is not ready.`,
		Example: `  lucidctl status
  lucidctl status --json
  lucidctl status --port-offset 1000`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.PortOffset = givenOffset(cmd, offset)
			return runStatus(cmd.Context(), opts)
		},
	}
	portOffsetFlag(cmd, &offset, "the port offset of the stack to show (default: local.port_offset of lucid.yaml)")
	return cli.SupportsJSON(cmd)
}

func runStatus(_ context.Context, opts *StatusOptions) error {
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

	if opts.Env.JSON {
		if st.Services == nil {
			st.Services = []serviceState{}
		}
		if err := opts.Env.PrintJSON(st); err != nil {
			return err
		}
	} else {
		printTable(opts.Env, st)
		if st.Running {
			fmt.Fprintln(opts.Env.IO.Out, discoveryLine(st.Discovery))
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
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for ri, r := range rows {
		var line strings.Builder
		for i, c := range r {
			cell := c
			if i < len(r)-1 {
				cell = fmt.Sprintf("%-*s", widths[i]+2, c)
			}
			switch {
			case ri == 0:
				cell = styles.Bold.Render(cell)
			case i == 1:
				cell = stateStyle(styles, supervise.State(c)).Render(cell)
			}
			line.WriteString(cell)
		}
		fmt.Fprintln(env.IO.Out, strings.TrimRight(line.String(), " "))
	}
}

func stateStyle(styles *iostreams.Styles, s supervise.State) lipgloss.Style {
	switch s {
	case supervise.StateReady:
		return styles.Success
	case supervise.StateFailed:
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
