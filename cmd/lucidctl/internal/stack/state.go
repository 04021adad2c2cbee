package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/supervise"
)

// layout names the files of a local stack under its state directory.
type layout struct{ dir string }

func (l layout) stateFile() string          { return filepath.Join(l.dir, "supervisor.json") }
func (l layout) stopFile() string           { return filepath.Join(l.dir, "stop-requested") }
func (l layout) lockFile() string           { return filepath.Join(l.dir, "supervisor.lock") }
func (l layout) logDir() string             { return filepath.Join(l.dir, "logs") }
func (l layout) stackLog() string           { return filepath.Join(l.logDir(), "stack.log") }
func (l layout) supervisorLog() string      { return filepath.Join(l.logDir(), "supervisor.log") }
func (l layout) serviceLog(n string) string { return filepath.Join(l.logDir(), n+".log") }
func (l layout) dataDir(n string) string    { return filepath.Join(l.dir, "data", n) }
func (l layout) binDir() string             { return filepath.Join(l.dir, "bin") }

// stackLayout loads the project file and returns the layout of its stack.
func stackLayout(env *cli.Env) (layout, error) {
	cfg, err := env.Config()
	if err != nil {
		return layout{}, err
	}
	return layout{cfg.Abs(cfg.Local.StateDir)}, nil
}

// stackState is the state file the supervisor keeps up to date and that
// status, logs and down read. Its fields are the --json form of status.
type stackState struct {
	Running       bool           `json:"running"`
	SupervisorPID int            `json:"supervisor_pid"`
	StartedAt     time.Time      `json:"started_at"`
	UpdatedAt     time.Time      `json:"updated_at"`
	Services      []serviceState `json:"services"`
}

// serviceState is one service's line in the state file.
type serviceState struct {
	supervise.Status
	URL string `json:"url,omitempty"`
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
