package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
)

// LogOptions choose the lines Logs reads.
type LogOptions struct {
	// Services are catalog names, or "consul"; none means every container
	// of the deployment.
	Services []string
	// Follow keeps reading new lines until ctx ends, across restarts and
	// recreations of the containers.
	Follow bool
	// Since leaves out lines older than this (zero: from the start).
	Since time.Time
	// Tail is how many of each service's last lines to start with (< 0:
	// all of them).
	Tail int
}

// LogLine is one line a service wrote.
type LogLine struct {
	Service string
	Time    time.Time
	// Stream is "stdout" or "stderr".
	Stream string
	// Text is the line without its newline, as the service wrote it.
	Text string
}

// LogServices are the names Logs takes: the catalog's and "consul".
func LogServices() []string { return append(catalog.Names(), "consul") }

// Logs reads the services' logs from the host's Docker Engine and hands
// every line to emit, one call at a time (lines of different services
// arrive as they are read: interleaved, each service's in order). With
// Follow it returns only when ctx ends (nil) or a service's logs cannot be
// read at all; a container that stops, restarts or is recreated is
// followed again from the last line seen.
func (d *Deployer) Logs(ctx context.Context, o LogOptions, emit func(LogLine)) error {
	names := o.Services
	if len(names) == 0 {
		names = catalog.Names()
		if list, err := d.h.projectContainers(ctx); err == nil {
			for _, c := range list {
				if c.Labels["com.docker.compose.service"] == deployfiles.ConsulContainer {
					names = append(names, "consul")
				}
			}
		}
	}
	var mu sync.Mutex
	locked := func(l LogLine) {
		mu.Lock()
		defer mu.Unlock()
		emit(l)
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		cname, err := containerOf(name)
		if err != nil {
			return err
		}
		wg.Go(func() { errs[i] = d.serviceLogs(ctx, name, cname, o, locked) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(errs...)
}

func containerOf(name string) (string, error) {
	if name == "consul" {
		return deployfiles.ConsulContainer, nil
	}
	s, ok := catalog.Lookup(name)
	if !ok {
		return "", fmt.Errorf("%w %q (one of: %s)", ErrUnknownService, name, strings.Join(LogServices(), ", "))
	}
	return s.Container, nil
}

// serviceLogs reads one service's log; with Follow it re-attaches whenever
// the container starts again, from just after the last line seen.
func (d *Deployer) serviceLogs(ctx context.Context, name, cname string, o LogOptions, emit func(LogLine)) error {
	var starts <-chan events.Message
	var evErrs <-chan error
	if o.Follow {
		// Listened to before the first read, so no start is missed.
		ectx, cancel := context.WithCancel(ctx)
		defer cancel()
		starts, evErrs = d.h.docker.Events(ectx, events.ListOptions{Filters: filters.NewArgs(
			filters.Arg("type", string(events.ContainerEventType)),
			filters.Arg("event", string(events.ActionStart)),
			filters.Arg("label", "com.docker.compose.project="+d.h.project),
			filters.Arg("label", "com.docker.compose.service="+cname),
		)})
	}
	since, tail := o.Since, o.Tail
	first := true
	for {
		c, err := d.findContainer(ctx, cname)
		if err != nil {
			return err
		}
		if c == nil && !o.Follow {
			return fmt.Errorf("%s: no container %s", name, cname)
		}
		if c != nil && (first || c.State == "running") {
			last, err := d.readLogs(ctx, name, c.ID, since, tail, o.Follow, emit)
			if err != nil && ctx.Err() == nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if !last.IsZero() {
				since = last.Add(time.Nanosecond)
			}
			// Once read, only what comes next: a new container's whole
			// log is new, the same one's is cut at since.
			tail = -1
			if since.IsZero() {
				since = d.cfg.Now()
			}
		}
		first = false
		if !o.Follow || ctx.Err() != nil {
			return nil
		}
		// The stream ended: the container stopped. Read again once it, or
		// its replacement, runs; a start since the end is already queued.
		if c, err := d.findContainer(ctx, cname); err == nil && c != nil && c.State == "running" && c.ID != "" && isNewer(ctx, d, c.ID, since) {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-evErrs:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: docker events: %w", name, err)
		case <-starts:
		}
	}
}

// isNewer reports whether container id started at or after t: a start the
// reader has not followed yet.
func isNewer(ctx context.Context, d *Deployer, id string, t time.Time) bool {
	in, err := d.h.docker.ContainerInspect(ctx, id)
	if err != nil || in.State == nil {
		return false
	}
	started, err := time.Parse(time.RFC3339Nano, in.State.StartedAt)
	return err == nil && !started.Before(t.Add(-time.Nanosecond))
}

// findContainer is the deployment's container called cname, or nil.
func (d *Deployer) findContainer(ctx context.Context, cname string) (*container.Summary, error) {
	list, err := d.h.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", "com.docker.compose.project="+d.h.project),
		filters.Arg("label", "com.docker.compose.service="+cname),
	)})
	if err != nil {
		return nil, fmt.Errorf("%s: docker ps: %w", d.cfg.Name, err)
	}
	for _, c := range list {
		if c.Labels["com.docker.compose.oneoff"] != "True" {
			return &c, nil
		}
	}
	return nil, nil
}

// readLogs streams one container's log to its end (with follow: until the
// container stops) and returns the time of the last line.
func (d *Deployer) readLogs(ctx context.Context, name, id string, since time.Time, tail int, follow bool, emit func(LogLine)) (time.Time, error) {
	opts := container.LogsOptions{ShowStdout: true, ShowStderr: true, Timestamps: true, Follow: follow}
	if !since.IsZero() {
		opts.Since = strconv.FormatInt(since.Unix(), 10) + "." + fmt.Sprintf("%09d", since.Nanosecond())
	}
	if tail >= 0 {
		opts.Tail = strconv.Itoa(tail)
	}
	rc, err := d.h.docker.ContainerLogs(ctx, id, opts)
	if err != nil {
		return time.Time{}, err
	}
	defer rc.Close()
	stop := context.AfterFunc(ctx, func() { _ = rc.Close() }) // ends a follow
	defer stop()

	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	var last time.Time
	var mu sync.Mutex
	var wg sync.WaitGroup
	scan := func(r io.Reader, stream string) {
		eachLine(r, maxLogLine, func(line string) {
			ts, text, _ := strings.Cut(line, " ")
			t, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil {
				t, text = time.Time{}, line
			}
			mu.Lock()
			if t.After(last) {
				last = t
			}
			mu.Unlock()
			emit(LogLine{Service: name, Time: t, Stream: stream, Text: text})
		})
		_, _ = io.Copy(io.Discard, r) // a read error: let the demux go on
	}
	wg.Go(func() { scan(outR, "stdout") })
	wg.Go(func() { scan(errR, "stderr") })
	_, err = stdcopy.StdCopy(outW, errW, rc)
	_ = outW.Close()
	_ = errW.Close()
	wg.Wait()
	if ctx.Err() != nil {
		err = nil
	}
	return last, err
}

// maxLogLine is the most of one log line shown; the rest of a longer one
// is cut, said so, and the lines after it go on.
const maxLogLine = 1 << 20

// truncatedMark ends a log line cut at maxLogLine.
const truncatedMark = " …[truncated]"

// eachLine calls fn with each line of r, without its newline, a line
// longer than limit cut there (marked) rather than ending the stream.
func eachLine(r io.Reader, limit int, fn func(string)) {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a line longer than the buffer, so far
	cut := false    // the line passed max: the rest of it is dropped
	for {
		part, err := br.ReadSlice('\n')
		full := errors.Is(err, bufio.ErrBufferFull)
		// A line ends at its newline, or at the stream's end after a part
		// of it (that part possibly read already, a whole buffer long).
		done := err == nil || (!full && (len(part) > 0 || len(long) > 0))
		if !cut {
			long = append(long, part...)
			if len(long) > limit {
				long, cut = append(long[:limit], truncatedMark...), true
			}
		}
		if done {
			line := strings.TrimSuffix(strings.TrimSuffix(string(long), "\n"), "\r")
			if cut {
				line = string(long)
			}
			fn(line)
			long, cut = long[:0], false
		}
		if err != nil && !full {
			return
		}
	}
}
