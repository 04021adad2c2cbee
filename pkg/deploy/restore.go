package deploy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/restoredata"
)

// AuditRestore is a restore of backed-up data onto the host.
const AuditRestore AuditAction = "restore"

// StepRestore writes a service's data into its volume.
const StepRestore Step = "restore"

// ErrNotDeployed is a restore onto a host without a deployed release (or
// without the containers of one): the volumes and images a restore writes
// with come from a deploy.
var ErrNotDeployed = errors.New("no deployed release to restore into: deploy first (lucidctl deploy), then restore")

// ErrReleaseChanged is a restore whose release (RestoreOptions.Release)
// is no longer the current one when it holds the lock.
var ErrReleaseChanged = errors.New("another release went live while the restore waited for the lock")

// ServiceData is one service's files, to be written into its volume.
type ServiceData struct {
	// Service is the catalog name.
	Service string
	// Manifest lists the files the data directory holds after the restore.
	Manifest restoredata.Manifest
	// Open returns a file's bytes; the restore closes it.
	Open func(ctx context.Context, path string) (io.ReadCloser, error)
}

// RestoreOptions are a restore's inputs.
type RestoreOptions struct {
	// Data are the services to restore; they are stopped, written and
	// started again, in the catalog's order.
	Data []ServiceData
	// EnvFiles, when not nil, replace the current release's env files of
	// the same paths (deployfiles.ServiceEnvPath), and the services are
	// recreated with compose up to read them.
	EnvFiles map[string][]byte
	// Release, when set, is the release EnvFiles were worked out
	// against (which of its files differ from the backup's): if another
	// is current once the lock is held (a deploy finished while this
	// restore waited), the restore stops before anything changes, rather
	// than mix the backup's files with the new release's.
	Release string
	// Backup names what is restored, for the audit trail.
	Backup string
	// BeforeStop runs under the lock with the services still running; an
	// error from it stops the restore before anything changed.
	BeforeStop func(ctx context.Context) error
}

// RestoreResult is what a restore did on a host.
type RestoreResult struct {
	Target   string                         `json:"target"`
	Release  string                         `json:"release"`
	Services map[string]*restoredata.Result `json:"services"`
	// EnvFiles are the env files written (paths only).
	EnvFiles []string `json:"env_files,omitempty"`
	// AuditError says the restore, which succeeded, is missing from the
	// host's audit log.
	AuditError string `json:"audit_error,omitempty"`
}

// largestFirst orders names (catalog order) by the size of their data,
// largest first: the order the volumes are written in. A volume's copy is
// staged beside its old data, which goes only at the swap, so a disk
// without room for both fails on the largest (the data chain's, as a
// rule) before any other volume was replaced, and the services start
// again on their data as it was; each swap then frees the old data for
// the smaller ones after it.
func largestFirst(names []string, data []ServiceData) []string {
	size := map[string]int64{}
	for _, sd := range data {
		for _, f := range sd.Manifest.Files {
			size[sd.Service] += f.Size
		}
	}
	out := slices.Clone(names)
	slices.SortStableFunc(out, func(a, b string) int { return cmp.Compare(size[b], size[a]) })
	return out
}

// Restore writes backed-up data into the services' volumes of the current
// release, under the deploy lock: it stops every service of the release,
// runs `lucid data
// restore` for each in a one-shot container of the service's own image
// with the service's volume mounted (the images have no shell), writes the
// env files if given, starts the services again and waits until they are
// healthy. A service whose data failed to arrive whole keeps its old data
// (restoredata swaps only complete, checked copies) and the restore stops
// there with the services stopped, for the operator to look at.
func (d *Deployer) Restore(ctx context.Context, o RestoreOptions) (res *RestoreResult, opErr error) {
	name := d.cfg.Name
	var names []string
	for _, s := range catalog.Services {
		if slices.ContainsFunc(o.Data, func(sd ServiceData) bool { return sd.Service == s.Name }) {
			names = append(names, s.Name)
		}
	}
	for _, sd := range o.Data {
		if !slices.Contains(names, sd.Service) {
			return nil, fmt.Errorf("%w %q", ErrUnknownService, sd.Service)
		}
	}
	for p := range o.EnvFiles {
		// Paths from a backup, which whoever can write to its disk
		// chooses: joined to the release's directory, "../../.ssh/..."
		// would land anywhere the deploy user may write.
		if !deployfiles.IsServiceEnvPath(p) {
			return nil, fmt.Errorf("%s: %q is not a service's env file (%s); nothing was restored", name, p, deployfiles.ServiceEnvPath("<service>"))
		}
	}
	held, release, err := d.holdLock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx = held
	defer func() { opErr = lockLost(held, opErr) }()
	entry := AuditEntry{Action: AuditRestore, Services: names}
	if o.Backup != "" {
		entry.Args = []string{"--backup", o.Backup}
	}
	if o.EnvFiles != nil {
		entry.Args = append(entry.Args, "--env")
	}
	defer func() { opErr = d.auditOutcome(ctx, entry, opErr, func(msg string) { res.AuditError = msg }) }()

	cur, err := d.h.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", name, err)
	}
	if cur == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrNotDeployed)
	}
	entry.Release = cur.ID
	if o.EnvFiles != nil && o.Release != "" && o.Release != cur.ID {
		return nil, fmt.Errorf("%s: %w: release %s is current now, not %s, which the env files were compared with; nothing was restored (run the restore again)",
			name, ErrReleaseChanged, cur.ID, o.Release)
	}
	byService, err := d.h.serviceContainers(ctx)
	if err != nil {
		return nil, err
	}
	type target struct {
		data   ServiceData
		c      container.Summary
		volume string
		dir    string
	}
	var targets []target
	for _, n := range largestFirst(names, o.Data) {
		s, _ := catalog.Lookup(n)
		c, ok := byService[s.Container]
		if !ok {
			return nil, fmt.Errorf("%s: %s has no container %s: %w", name, n, s.Container, ErrNotDeployed)
		}
		dir := path.Join(deployfiles.DataRoot, n)
		vol, err := d.volumeOf(ctx, c.ID, dir)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(o.Data, func(sd ServiceData) bool { return sd.Service == n })
		targets = append(targets, target{data: o.Data[i], c: c, volume: vol, dir: dir})
	}
	if o.BeforeStop != nil {
		if err := o.BeforeStop(ctx); err != nil {
			return nil, err
		}
	}
	res = &RestoreResult{Target: name, Release: cur.ID, Services: map[string]*restoredata.Result{}}

	// Every service of the release stops and starts again, not only those
	// restored: the others hold mesh certificates of the CA the restore
	// replaces, and enrol again with the restored one when they start.
	type member struct {
		name string
		c    container.Summary
	}
	var cycle []member
	for _, s := range catalog.Services {
		if c, ok := byService[s.Container]; ok {
			cycle = append(cycle, member{s.Name, c})
		}
	}
	// From the first stop on, a failure keeps what was restored in res,
	// and says where the host stands. While every volume is known to be
	// as it was, the services stopped start again: the host serves its
	// data as before.
	var stopped []member
	touched := "" // a volume whose restore failed after it may have begun to change it
	failed := func(err error) (*RestoreResult, error) {
		var changed []string
		if len(res.Services) > 0 {
			changed = append(changed, "restored before it: "+strings.Join(slices.Sorted(maps.Keys(res.Services)), ", "))
		}
		if touched != "" {
			changed = append(changed, touched+"'s volume may be half replaced (marked so: its service refuses to start on it)")
		}
		switch {
		case len(changed) > 0:
			return res, fmt.Errorf("%w; %s; the stack's services may be stopped: run the restore again", err, strings.Join(changed, "; "))
		case len(stopped) == 0:
			return res, err
		}
		if errors.Is(context.Cause(ctx), errLockTaken) {
			// Another command holds the host now: it is its to start.
			return res, fmt.Errorf("%w; no volume was replaced; the services stopped for the restore stay stopped", err)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), restartWait)
		defer cancel()
		var serr []error
		again := map[string]bool{}
		for i := len(stopped) - 1; i >= 0; i-- {
			if e := d.h.docker.ContainerStart(sctx, stopped[i].c.ID, container.StartOptions{}); e != nil {
				serr = append(serr, fmt.Errorf("start %s: %w", stopped[i].name, e))
			}
			again[stopped[i].c.Labels[composeServiceLabel]] = true
		}
		if len(serr) > 0 {
			return res, fmt.Errorf("%w; no volume was replaced, and starting the services again failed: %w", err, errors.Join(serr...))
		}
		if ctx.Err() != nil {
			// Interrupted, or the lock lost since the starts: the
			// operator asked to stop, or another command holds the host.
			d.emit(StepStart, EventOK, "no volume was replaced: the services stopped for the restore started again")
			return res, fmt.Errorf("%w; no volume was replaced, and the services stopped for the restore started again (their health not awaited: %w)", err, context.Cause(ctx))
		}
		// Started is not serving: the operator is told they run only
		// once their health checks pass, as after a restore that did.
		d.emit(StepHealth, EventStart, fmt.Sprintf("no volume was replaced: the services stopped for the restore started again, healthy within %s", d.cfg.HealthTimeout))
		if e := d.h.waitHealthy(ctx, cur.ID, len(again), d.cfg.HealthTimeout, again); e != nil {
			d.emit(StepHealth, EventFail, e.Error())
			return res, fmt.Errorf("%w; no volume was replaced, and the services stopped for the restore started again but are not healthy: %w", err, e)
		}
		d.emit(StepHealth, EventOK, "no volume was replaced: the services stopped for the restore run again")
		return res, fmt.Errorf("%w; no volume was replaced, and the services stopped for the restore run again", err)
	}
	for i := len(cycle) - 1; i >= 0; i-- {
		m := cycle[i]
		d.emit(StepStop, EventStart, m.name)
		// Counted before the stop: one that fails (an interrupt while
		// the Engine stops it) may have stopped it all the same, and
		// starting a running container again does nothing.
		stopped = append(stopped, m)
		if err := d.h.docker.ContainerStop(ctx, m.c.ID, container.StopOptions{}); err != nil {
			err = fmt.Errorf("%s: stop %s: %w", name, m.name, err)
			d.emit(StepStop, EventFail, err.Error())
			return failed(err)
		}
		d.emit(StepStop, EventOK, m.name)
	}
	for _, t := range targets {
		d.emit(StepRestore, EventStart, fmt.Sprintf("%s: %d files into volume %s", t.data.Service, len(t.data.Manifest.Files), t.volume))
		r, err := d.writeVolume(ctx, t.c.ImageID, t.volume, t.dir, t.data)
		if err != nil && !errors.Is(err, restoredata.ErrUnchanged) {
			touched = t.data.Service
		}
		if err != nil {
			err = fmt.Errorf("%s: restore %s: %w", name, t.data.Service, err)
			d.emit(StepRestore, EventFail, err.Error())
			return failed(err)
		}
		res.Services[t.data.Service] = r
		d.emit(StepRestore, EventOK, fmt.Sprintf("%s: %d files, %d bytes", t.data.Service, r.Files, r.Bytes))
	}

	only := map[string]bool{}
	for _, m := range cycle {
		only[m.c.Labels[composeServiceLabel]] = true
	}
	if o.EnvFiles != nil {
		dir := d.h.releaseDir(cur.ID)
		for _, p := range slices.Sorted(maps.Keys(o.EnvFiles)) {
			if err := d.h.ssh.WriteFile(ctx, path.Join(dir, p), o.EnvFiles[p], 0o600); err != nil {
				return failed(fmt.Errorf("%s: write %s: %w", name, p, err))
			}
			res.EnvFiles = append(res.EnvFiles, p)
		}
		// A container reads its env file when it is created: compose
		// recreates those whose file changed, and starts the stopped ones.
		if err := d.h.detectCompose(ctx); err != nil {
			return failed(err)
		}
		d.emit(StepUp, EventStart, cur.ID)
		if err := d.h.up(ctx, cur.ID, d.h.upLimit(d.cfg.HealthTimeout)); err != nil {
			d.emit(StepUp, EventFail, err.Error())
			return failed(err)
		}
		d.emit(StepUp, EventOK, "")
		only = nil // every service may have been recreated
	} else {
		for _, m := range cycle {
			d.emit(StepStart, EventStart, m.name)
			if err := d.h.docker.ContainerStart(ctx, m.c.ID, container.StartOptions{}); err != nil {
				err = fmt.Errorf("%s: start %s: %w", name, m.name, err)
				d.emit(StepStart, EventFail, err.Error())
				return failed(err)
			}
			d.emit(StepStart, EventOK, m.name)
		}
	}
	want := len(only)
	if only == nil {
		want = len(byService)
	}
	d.emit(StepHealth, EventStart, fmt.Sprintf("healthy within %s", d.cfg.HealthTimeout))
	if err := d.h.waitHealthy(ctx, cur.ID, want, d.cfg.HealthTimeout, only); err != nil {
		d.emit(StepHealth, EventFail, err.Error())
		return failed(fmt.Errorf("%s: %w", name, err))
	}
	d.emit(StepHealth, EventOK, "")
	return res, nil
}

// volumeOf is the name of the volume container id mounts at dir.
func (d *Deployer) volumeOf(ctx context.Context, id, dir string) (string, error) {
	info, err := d.h.docker.ContainerInspect(ctx, id)
	if err != nil {
		return "", fmt.Errorf("%s: inspect %s: %w", d.cfg.Name, id, err)
	}
	for _, m := range info.Mounts {
		if m.Destination == dir && m.Type == mount.TypeVolume && m.Name != "" {
			return m.Name, nil
		}
	}
	return "", fmt.Errorf("%s: container %s mounts no volume at %s", d.cfg.Name, strings.TrimPrefix(info.Name, "/"), dir)
}

// restoreLabel marks the one-shot containers of a restore.
const restoreLabel = "io.lucid.restore"

const (
	// swapWait bounds the wait for a restore container to exit once its
	// stream has ended, interrupt or not: what is left is syncing the
	// staged files to the card and renaming them into place.
	swapWait = 15 * time.Minute
	// restartWait bounds starting the services again after a restore
	// that replaced nothing, interrupt or not (their health gate has its
	// own bound on top).
	restartWait = 2 * time.Minute
)

// writeVolume runs `lucid data restore` in a one-shot container of image
// with volume mounted at dir, and streams sd's files to its stdin.
func (d *Deployer) writeVolume(ctx context.Context, image, volume, dir string, sd ServiceData) (*restoredata.Result, error) {
	return WriteVolume(ctx, d.h.docker, image, volume, dir, sd, func(msg string) { d.emit(StepRestore, EventWarn, msg) })
}

// WriteVolume runs `lucid data restore --dir dir` in a one-shot container
// of image (one of the services' images, which hold the lucid binary and
// nothing else) as the services' user, with volume mounted at dir and no
// network, and streams sd's files to its stdin. An error that wraps
// restoredata.ErrUnchanged left the volume as it was; any other may have
// come after the swap began. The container is removed once it has
// exited; one that could not be seen to exit is left to end its swap.
// interrupted (when not nil) hears, once ctx ends before the container
// has exited, that it is being waited for.
func WriteVolume(ctx context.Context, dc *client.Client, image, volume, dir string, sd ServiceData, interrupted func(msg string)) (*restoredata.Result, error) {
	created, err := dc.ContainerCreate(ctx, &container.Config{
		Image:        image,
		Entrypoint:   []string{deployfiles.Binary},
		Cmd:          []string{"data", "restore", "--dir", dir},
		User:         deployfiles.User,
		OpenStdin:    true,
		StdinOnce:    true,
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		Labels:       map[string]string{restoreLabel: sd.Service},
	}, &container.HostConfig{
		NetworkMode: "none",
		Mounts:      []mount.Mount{{Type: mount.TypeVolume, Source: volume, Target: dir}},
	}, nil, nil, "")
	if err != nil {
		return nil, fmt.Errorf("create the restore container: %w; %w", err, restoredata.ErrUnchanged)
	}
	leave := false // it may still be swapping files: not removed by force
	defer func() {
		if leave {
			return
		}
		// Removed even when ctx ended: a left-over container holds the volume.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = dc.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true})
	}()
	hj, err := dc.ContainerAttach(ctx, created.ID, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return nil, fmt.Errorf("attach to the restore container: %w; %w", err, restoredata.ErrUnchanged)
	}
	defer hj.Close()
	// Once started, the container is waited for, not removed by force,
	// even when ctx ends: killed while it renames the staged files into
	// place, it would leave the volume half-replaced (marked, so no
	// service starts on it, but down until restored again). A stream cut
	// short on this side makes it refuse and exit at once, the volume as
	// it was.
	wctx, stopWaiting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWaiting()
	waitC, waitErr := dc.ContainerWait(wctx, created.ID, container.WaitConditionNextExit)
	if err := dc.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return nil, fmt.Errorf("start the restore container: %w; %w", err, restoredata.ErrUnchanged)
	}
	var stdout, stderr bytes.Buffer
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(&stdout, &stderr, hj.Reader)
		copied <- err
	}()
	sendErr := restoredata.WriteStream(ctx, hj.Conn, sd.Manifest, sd.Open)
	if cerr := hj.CloseWrite(); sendErr == nil {
		sendErr = cerr
	}
	var code int64
	exited := time.NewTimer(swapWait)
	defer exited.Stop()
	// ctx ending does not end the wait; it is said once, so that an
	// operator who pressed Ctrl-C knows why nothing ends yet.
	ended := ctx.Done()
	say := func() {
		ended = nil
		if interrupted == nil {
			return
		}
		why := "interrupted"
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			why = cause.Error() // the deploy lock lost, say
		}
		interrupted(fmt.Sprintf("%s: %s; waiting for the restore container %.12s to finish with volume %s (at most %s), as stopping it could leave the volume half replaced",
			sd.Service, why, created.ID, volume, swapWait))
	}
	if ctx.Err() != nil {
		say()
	}
wait:
	for {
		select {
		case <-ended:
			say()
		case w := <-waitC:
			code = w.StatusCode
			if w.Error != nil {
				return nil, fmt.Errorf("the restore container: %s", w.Error.Message)
			}
			break wait
		case err := <-waitErr:
			// The link to the Docker Engine broke, say: whether it still
			// renames files is not known, so it is left to end.
			leave = true
			return nil, fmt.Errorf("wait for the restore container %.12s: %w; it is left to end on its own", created.ID, err)
		case <-exited.C:
			leave = true
			return nil, fmt.Errorf("the restore container %.12s did not exit within %s of its stream's end; it is left running, as it may be renaming files into the volume (docker logs on the host says how far it got)", created.ID, swapWait)
		}
	}
	// Its answer, read whole or cut: the exit code decides, and a cut
	// answer costs only the counts below.
	if copyErr := <-copied; copyErr != nil && code == 0 {
		stdout.Reset()
	}
	if code != 0 {
		// Its own words say why (a mismatch, a full disk); a stream that
		// broke on this side comes second.
		err := fmt.Errorf("lucid data restore exited %d: %s", code, lastStderr(&stderr))
		if sendErr != nil {
			err = fmt.Errorf("%w (sending: %w)", err, sendErr)
		}
		if code == restoredata.ExitUnchanged {
			err = fmt.Errorf("%w; %w", err, restoredata.ErrUnchanged)
		}
		return nil, err
	}
	// Exit 0: every file arrived whole and matched, and the volume is the
	// backup's, whatever this side's end of the stream said. An answer
	// lost on the way leaves its counts unknown (zero), not the volume.
	var res restoredata.Result
	if json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &res) != nil {
		res = restoredata.Result{}
	}
	return &res, nil
}

// detectCompose finds the host's compose command, as preflight does.
func (h *host) detectCompose(ctx context.Context) error {
	if h.compose != "" {
		return nil
	}
	if v, err := h.run(ctx, "docker compose version --short"); err == nil && v != "" {
		h.compose = "docker compose"
		return nil
	}
	if v, err := h.run(ctx, "docker-compose version --short"); err == nil && v != "" {
		h.compose = "docker-compose"
		return nil
	}
	return fmt.Errorf("%s: %w", h.name, ErrNoCompose)
}

// lastStderr is the end of a one-shot container's stderr, for an error.
func lastStderr(b *bytes.Buffer) string {
	return strings.TrimSpace(lastLines(b.String(), 10))
}
