package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/supervise"
)

// layout names the files of a local stack under its state directory. A
// stack is known by its port offset: the one at offset 0 keeps its files
// in the state directory itself, the one at offset N in
// <state_dir>/offset-N, so stacks side by side have their own lock, state,
// logs and data.
type layout struct {
	base string // the state directory (local.state_dir)
	dir  string // this stack's
}

// newLayout is the layout of the stack at offset under stateDir.
func newLayout(stateDir string, offset int) layout {
	dir := stateDir
	if offset != 0 {
		dir = filepath.Join(stateDir, offsetDirPrefix+strconv.Itoa(offset))
	}
	return layout{base: stateDir, dir: dir}
}

// offsetDirPrefix starts the name of a stack's directory at a port offset.
const offsetDirPrefix = "offset-"

func (l layout) stateFile() string          { return filepath.Join(l.dir, "supervisor.json") }
func (l layout) stopFile() string           { return filepath.Join(l.dir, "stop-requested") }
func (l layout) lockFile() string           { return filepath.Join(l.dir, "supervisor.lock") }
func (l layout) logDir() string             { return filepath.Join(l.dir, "logs") }
func (l layout) stackLog() string           { return filepath.Join(l.logDir(), "stack.log") }
func (l layout) supervisorLog() string      { return filepath.Join(l.logDir(), "supervisor.log") }
func (l layout) serviceLog(n string) string { return filepath.Join(l.logDir(), n+".log") }
func (l layout) dataDir(n string) string    { return filepath.Join(l.dir, "data", n) }
func (l layout) binDir() string             { return filepath.Join(l.base, "bin") }

// makePrivate creates the stack's state and log directories, or tightens
// them, as only their owner's: they hold the lock that says which
// process is the supervisor (and so what down signals), the state file
// and the services' logs. One made by an older lucidctl was 0755.
func (l layout) makePrivate() error {
	for _, dir := range []string{l.dir, l.logDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
	}
	return nil
}

// maxPortOffset bounds --port-offset, so that every port stays below
// 65536; render's bound.
const maxPortOffset = deployfiles.MaxPortOffset

// portOffset is the offset given (nil: none), else local.port_offset of
// lucid.yaml, checked.
func portOffset(cfg *projectconfig.Config, given *int) (int, error) {
	off, from := cfg.Local.PortOffset, "local.port_offset"
	if given != nil {
		off, from = *given, "--port-offset"
	}
	if off < 0 || off > maxPortOffset {
		return 0, cli.Usage(fmt.Errorf("%s %d is outside 0..%d", from, off, maxPortOffset))
	}
	return off, nil
}

// portOffsetFlag adds --port-offset to cmd; what it sets is read with
// givenOffset.
func portOffsetFlag(cmd *cobra.Command, p *int, usage string) {
	cmd.Flags().IntVar(p, "port-offset", 0, usage)
}

// givenOffset is the --port-offset given on cmd, nil when it was not.
func givenOffset(cmd *cobra.Command, v int) *int {
	if !cmd.Flags().Changed("port-offset") {
		return nil
	}
	return &v
}

// stackLayout loads the project file and returns the layout of the stack
// at the port offset given (nil: lucid.yaml's).
func stackLayout(env *cli.Env, given *int) (layout, error) {
	cfg, err := env.Config()
	if err != nil {
		return layout{}, err
	}
	off, err := portOffset(cfg, given)
	if err != nil {
		return layout{}, err
	}
	return newLayout(cfg.Abs(cfg.Local.StateDir), off), nil
}

// runningStacks lists the port offsets of the stacks that run from the
// state directory of l, other than l's own.
func runningStacks(l layout) []int {
	var out []int
	if l.dir != l.base && supervisorRunning(newLayout(l.base, 0)) {
		out = append(out, 0)
	}
	dirs, _ := filepath.Glob(filepath.Join(l.base, offsetDirPrefix+"*"))
	for _, d := range dirs {
		off, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), offsetDirPrefix))
		if err != nil || d == l.dir {
			continue
		}
		if supervisorRunning(newLayout(l.base, off)) {
			out = append(out, off)
		}
	}
	slices.Sort(out)
	return out
}

// otherStacksHint names the stacks running beside l's, for a message
// about l's, or is "".
func otherStacksHint(l layout) string {
	others := runningStacks(l)
	if len(others) == 0 {
		return ""
	}
	var flags []string
	for _, o := range others {
		flags = append(flags, "--port-offset "+strconv.Itoa(o))
	}
	return "running beside it: the stack at " + strings.Join(flags, ", ")
}

// discoveryMode is how the gateway finds the services: through a
// supervised Consul agent, or from their fixed addresses.
type discoveryMode string

const (
	discoveryConsul discoveryMode = "consul"
	discoveryStatic discoveryMode = "static"
)

// stackState is the state file the supervisor keeps up to date and that
// status, logs and down read. Its fields are the --json form of status.
type stackState struct {
	Running       bool      `json:"running"`
	SupervisorPID int       `json:"supervisor_pid"`
	StartedAt     time.Time `json:"started_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// Discovery is how the stack's gateway finds the services: "consul"
	// with a supervised agent, else "static" (empty before any start).
	Discovery discoveryMode  `json:"discovery,omitempty"`
	Services  []serviceState `json:"services"`
}

// serviceState is one service's line in the state file.
type serviceState struct {
	supervise.Status
	URL string `json:"url,omitempty"`
	// Problem says why status found a ready service unresponsive; it is
	// never in the state file.
	Problem string `json:"problem,omitempty"`
}

// errNoState means no stack has run from this state directory.
var errNoState = errors.New("no local stack state")

func readState(l layout) (*stackState, error) {
	data, err := os.ReadFile(l.stateFile())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errNoState
	}
	if err != nil {
		return nil, err
	}
	var st stackState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("state file %s is damaged: %w", l.stateFile(), err)
	}
	return &st, nil
}

func writeState(l layout, st *stackState) error {
	st.UpdatedAt = time.Now().UTC()
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return envfile.WriteAtomic(l.stateFile(), append(data, '\n'))
}

// errLocked means another supervisor holds the state directory's lock.
var errLocked = errors.New("the state directory is locked by a running supervisor")

// supervisorRunning reports whether a supervisor runs for this state
// directory: whether it holds the lock.
func supervisorRunning(l layout) bool { return lockHeld(l.lockFile()) }
