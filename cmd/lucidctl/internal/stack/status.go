package stack

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/supervise"
)

// StatusOptions are the inputs of `lucidctl status`.
type StatusOptions struct {
	Env *cli.Env
}

func newStatusCmd(env *cli.Env) *cobra.Command {
	opts := &StatusOptions{Env: env}
	return cli.SupportsJSON(&cobra.Command{
		Use:   "status",
		Short: "Show the state of the local stack",
		Long: `Show each service of the local stack: its state, pid, restarts and URL.

Exit status: 0 when the stack runs and every service is ready, 3 when it is
not running or a service is not ready.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(cmd.Context(), opts)
		},
	})
}

func runStatus(_ context.Context, opts *StatusOptions) error {
	l, err := stackLayout(opts.Env)
	if err != nil {
		return err
	}
	st, err := readState(l)
	if errors.Is(err, errNoState) {
		st = &stackState{}
	} else if err != nil {
		return err
	}
	st = current(st)

	if opts.Env.JSON {
		if st.Services == nil {
			st.Services = []serviceState{}
		}
		if err := opts.Env.PrintJSON(st); err != nil {
			return err
		}
	} else {
		printTable(opts.Env, st)
	}
	if !st.Running {
		if !opts.Env.JSON {
			fmt.Fprintln(opts.Env.IO.ErrOut, "the local stack is not running; `lucidctl up` starts it")
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

// current corrects a state file whose supervisor has died without saying
// so (kill -9): its children died with it, so nothing is running.
func current(st *stackState) *stackState {
	if st.Running && !st.live() {
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

// printTable writes the services as a table to stdout.
func printTable(env *cli.Env, st *stackState) {
	if st == nil || len(st.Services) == 0 {
		return
	}
	styles := env.IO.OutStyles()
	tw := tabwriter.NewWriter(env.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, styles.Bold.Render("SERVICE")+"\t"+styles.Bold.Render("STATE")+"\tPID\tRESTARTS\tSINCE\tURL\tLAST EXIT")
	for _, s := range st.Services {
		state := string(s.State)
		switch s.State {
		case supervise.StateReady:
			state = styles.Success.Render(state)
		case supervise.StateFailed:
			state = styles.Error.Render(state)
		case supervise.StateBackoff, supervise.StateStarting, supervise.StateWaiting:
			state = styles.Warning.Render(state)
		}
		pid := "-"
		if s.PID > 0 {
			pid = fmt.Sprint(s.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.Name, state, pid, s.Restarts, ago(s.Since), s.URL, s.LastExit)
	}
	_ = tw.Flush()
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
