// Package stack implements `lucidctl up`, `down`, `status` and `logs`: the
// whole Lucid stack run locally from the lucid binary under pkg/supervise.
//
// The supervisor keeps a state file (<state_dir>/supervisor.json) that the
// other commands read, and writes each service's output to
// <state_dir>/logs/<service>.log and the merged <state_dir>/logs/stack.log.
// Service data lives in <state_dir>/data/<service>.
package stack

import (
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// NewCmds returns the local stack commands.
func NewCmds(env *cli.Env) []*cobra.Command {
	return []*cobra.Command{newUpCmd(env), newDownCmd(env), newStatusCmd(env), newLogsCmd(env)}
}
