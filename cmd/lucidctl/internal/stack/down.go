package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// DownOptions are the inputs of `lucidctl down`.
type DownOptions struct {
	Env     *cli.Env
	Timeout time.Duration
	// PortOffset names the stack; nil takes local.port_offset of lucid.yaml.
	PortOffset *int
}

func newDownCmd(env *cli.Env) *cobra.Command {
	opts := &DownOptions{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the local stack",
		Long: `Stop the local stack: dependants first, each service's whole process group,
SIGTERM then SIGKILL after its deadline. Stopping a stack that is not running
is not an error. --port-offset names the stack (the one up started with that
offset); other stacks keep running.`,
		Example: `  lucidctl down
  lucidctl down --port-offset 1000`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.PortOffset = givenOffset(cmd, offset)
			return runDown(cmd.Context(), opts)
		},
	}
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "how long to wait for the stack to stop")
	portOffsetFlag(cmd, &offset, "the port offset of the stack to stop (default: local.port_offset of lucid.yaml)")
	return cmd
}

func runDown(ctx context.Context, opts *DownOptions) error {
	l, err := stackLayout(opts.Env, opts.PortOffset)
	if err != nil {
		return err
	}
	if !supervisorRunning(l) {
		fmt.Fprintln(opts.Env.IO.ErrOut, errNotRunning.Error())
		if h := otherStacksHint(l); h != "" {
			fmt.Fprintln(opts.Env.IO.ErrOut, h)
		}
		return nil
	}
	if err := os.WriteFile(l.stopFile(), nil, 0o600); err != nil {
		return fmt.Errorf("request stop: %w", err)
	}
	// The lock proves the supervisor in the state file is alive, so its pid
	// is not a recycled one; the signal only makes the stop immediate.
	pid := 0
	if st, err := readState(l); err == nil {
		pid = st.SupervisorPID
	} else if !errors.Is(err, errNoState) {
		return err
	}
	if pid > 0 {
		if err := signalStop(pid); err != nil {
			opts.Env.Logger.Debug("signal failed; relying on the stop file", "pid", pid, "error", err)
		}
	}
	fmt.Fprintf(opts.Env.IO.ErrOut, "stopping the local stack (supervisor pid %d) ...\n", pid)

	deadline := time.Now().Add(opts.Timeout)
	for supervisorRunning(l) {
		if time.Now().After(deadline) {
			return cli.WithHint(fmt.Errorf("the supervisor (pid %d) is still running after %s", pid, opts.Timeout),
				"`lucidctl logs lucidctl` shows what it is waiting for")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	_ = os.Remove(l.stopFile())
	fmt.Fprintln(opts.Env.IO.ErrOut, "stopped")
	return nil
}
