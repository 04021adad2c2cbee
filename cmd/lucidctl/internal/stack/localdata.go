package stack

import (
	"context"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// LocalData is where a local stack keeps its services' data, for the
// commands that write it while the stack is down (restore).
type LocalData struct {
	env *cli.Env
	l   layout
	// Offset is the stack's port offset.
	Offset int
}

// OpenLocalData is the local stack at the port offset given (nil:
// local.port_offset of lucid.yaml).
func OpenLocalData(env *cli.Env, given *int) (*LocalData, error) {
	cfg, err := env.Config()
	if err != nil {
		return nil, err
	}
	off, err := portOffset(cfg, given)
	if err != nil {
		return nil, err
	}
	return &LocalData{env: env, l: newLayout(cfg.Abs(cfg.Local.StateDir), off), Offset: off}, nil
}

// DataDir is service's data directory (LUCID_DATA_DIR of its process).
func (d *LocalData) DataDir(service string) string { return d.l.dataDir(service) }

// Running reports whether the stack's supervisor runs.
func (d *LocalData) Running() bool { return supervisorRunning(d.l) }

// Stop stops the stack as `lucidctl down` does.
func (d *LocalData) Stop(ctx context.Context, timeout time.Duration) error {
	off := d.Offset
	return runDown(ctx, &DownOptions{Env: d.env, Timeout: timeout, PortOffset: &off})
}
