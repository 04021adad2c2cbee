package deploy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/sshx"
)

// ComposeProject is the compose project of a target's releases unless
// lucid.yaml names another: one project per target, so that a new release
// replaces the previous one's containers.
const ComposeProject = "lucid"

// Release is one deploy on a host: a directory under <dir>/releases.
type Release struct {
	ID      string            `json:"id"`
	Version string            `json:"version"`
	Created time.Time         `json:"created"`
	By      string            `json:"by"`
	Images  map[string]string `json:"images"` // service → image ID
	Status  ReleaseStatus     `json:"status"`
	// Current is whether <dir>/current points at the release; it is read
	// from the link, never from release.json.
	Current bool `json:"current"`
}

func (h *host) releasesDir() string         { return path.Join(h.dir, "releases") }
func (h *host) releaseDir(id string) string { return path.Join(h.releasesDir(), id) }
func (h *host) currentLink() string         { return path.Join(h.dir, "current") }

// releaseIDPattern is what releaseID makes; anything else under releases/
// is not ours to list or remove.
var releaseIDPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z(-[A-Za-z0-9.-]+)?$`)

// releases lists the host's releases, newest first. A release is named by
// its directory; a missing or unreadable release.json leaves it with an
// unknown status.
func (h *host) releases(ctx context.Context) ([]Release, error) {
	out, err := h.run(ctx, fmt.Sprintf("cd %s 2>/dev/null || exit 0; for d in */; do printf '%%s\\n' \"${d%%/}\"; base64 -w0 \"$d/release.json\" 2>/dev/null; echo; done", sshx.Quote(h.releasesDir())))
	if err != nil {
		return nil, err
	}
	// Which release is current decides what a rollback picks: a failure
	// to ask is an error, not "none".
	cur, err := h.run(ctx, "readlink "+sshx.Quote(h.currentLink())+" 2>/dev/null; true")
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", h.name, h.currentLink(), err)
	}
	cur = path.Base(cur)
	var rs []Release
	lines := strings.Split(out, "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		dir := strings.TrimSpace(lines[i])
		if !releaseIDPattern.MatchString(dir) {
			continue
		}
		r := Release{ID: dir, Status: ReleaseUnknown}
		if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(lines[i+1])); err == nil {
			var rec Release
			if json.Unmarshal(raw, &rec) == nil && rec.ID == dir {
				r = rec
			}
		}
		r.Current = r.ID == cur
		rs = append(rs, r)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].ID > rs[j].ID })
	return rs, nil
}

// currentID is r's id, "" for no release.
func currentID(r *Release) string {
	if r == nil {
		return ""
	}
	return r.ID
}

func (h *host) current(ctx context.Context) (*Release, error) {
	rs, err := h.releases(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range rs {
		if r.Current {
			return &r, nil
		}
	}
	return nil, nil
}

// writeRelease puts the release's files on the host: compose (images
// pinned to the release's tags), each container's env file (0600), the
// gateway's route table if there is one, its TLS files and the mesh
// controller's CA seed if any (each placed through a container of its
// service's image, see place), and release.json,
// recording the new release (status "") as deploying. A release of
// before per-service env files has one shared env file; the next release
// simply does not, so a deploy is the migration, and a rollback to the old
// release brings its own files back.
func (h *host) writeRelease(ctx context.Context, r *Release, compose []byte, envFiles map[string][]byte, routes []byte, private []privateFiles) error {
	dir := h.releaseDir(r.ID)
	if err := h.ssh.WriteFile(ctx, path.Join(dir, deployfiles.ComposePath), compose, 0o644); err != nil {
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(envFiles)) {
		if err := h.ssh.WriteFile(ctx, path.Join(dir, p), envFiles[p], 0o600); err != nil {
			return err
		}
	}
	// Readable by the gateway's non-root user, through a read-only mount.
	if routes != nil {
		if err := h.ssh.WriteFile(ctx, path.Join(dir, deployfiles.RoutesPath), routes, 0o644); err != nil {
			return err
		}
	}
	for _, p := range private {
		if len(p.files) > 0 {
			if err := h.place(ctx, r.ID, p.image, p.dir, p.files); err != nil {
				return err
			}
		}
	}
	return h.record(ctx, r, ReleaseDeploying)
}

// privateFiles are the files of a privateDir and the image of the service
// they belong to.
type privateFiles struct {
	dir   privateDir
	image string
	files map[string][]byte
}

// record moves release r to status to, as the life cycle allows
// (Transition), and writes its release.json: the only way a record is
// written. r's status changes only once the record is on the host; a
// failed write is a *RecordError. A release already in status to is left
// as it is.
func (h *host) record(ctx context.Context, r *Release, to ReleaseStatus) error {
	if r.Status == to {
		return nil
	}
	if err := Transition(r.Status, to); err != nil {
		return &RecordError{Release: r.ID, Status: to, Err: err}
	}
	rec := *r
	rec.Status, rec.Current = to, false
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return &RecordError{Release: r.ID, Status: to, Err: err}
	}
	if err := h.ssh.WriteFile(ctx, path.Join(h.releaseDir(r.ID), releaseRecord), append(data, '\n'), 0o644); err != nil {
		return &RecordError{Release: r.ID, Status: to, Err: err}
	}
	r.Status = to
	return nil
}

// releaseRecord is a release's record in its directory.
const releaseRecord = "release.json"

// dockerAnswerWait bounds what waits on the host's Docker Engine beyond
// a step's own timeout: the health gate's calls past its deadline, and
// the look at the containers after a failed compose up.
const dockerAnswerWait = 30 * time.Second

// composeUpGrace is how long compose up may take beyond the health
// gate's timeout. It starts the services in order, each once its
// dependencies are healthy, so it may take about as long as the gate; a
// Docker Engine that stops answering (sshd still up) would otherwise hold
// it, the lock and lucidctl for ever.
const composeUpGrace = 5 * time.Minute

// up runs compose up for a release, within limit.
func (h *host) up(ctx context.Context, id string, limit time.Duration) error {
	cmd := fmt.Sprintf("cd %s && %s -p %s -f %s up -d --remove-orphans 2>&1",
		sshx.Quote(h.releaseDir(id)), h.compose, sshx.Quote(h.project), sshx.Quote(deployfiles.ComposePath))
	uctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	out, err := h.ssh.Run(uctx, cmd, nil)
	var ee *sshx.ExitError
	switch {
	case err != nil && ctx.Err() == nil && uctx.Err() != nil:
		return fmt.Errorf("%s: compose up of release %s did not finish within %s; is the host's Docker Engine answering?", h.name, id, limit)
	case errors.As(err, &ee):
		// The command line says nothing the operator needs; compose's own
		// words (it writes them all to stdout here) do.
		return fmt.Errorf("%s: compose up of release %s failed (exit %d):\n%s", h.name, id, ee.Code, lastLines(string(out), 15))
	case err != nil:
		return fmt.Errorf("%s: compose up of release %s: %w", h.name, id, err)
	}
	return nil
}

// makeCurrent points <dir>/current at a release, atomically.
func (h *host) makeCurrent(ctx context.Context, id string) error {
	tmp := h.currentLink() + ".new"
	// Then the deploy dir's file system is flushed: current, the
	// release's files and their directories are on the card before the
	// release is called live (sync -f is coreutils'; a plain sync, all
	// file systems, elsewhere).
	_, err := h.run(ctx, fmt.Sprintf("ln -sfn %s %s && mv -Tf %s %s && { sync -f %s 2>/dev/null || sync; }",
		sshx.Quote(path.Join("releases", id)), sshx.Quote(tmp), sshx.Quote(tmp), sshx.Quote(h.currentLink()), sshx.Quote(h.dir)))
	return err
}

// GateFailure is a release that did not become healthy: which services,
// with their health output and last log lines.
type GateFailure struct {
	Release  string
	Services []ServiceFailure
	Smoke    string
}

// ServiceFailure is one service that failed the gate.
type ServiceFailure struct {
	Container string `json:"container"`
	State     string `json:"state"`
	Health    string `json:"health,omitempty"`
	Logs      string `json:"logs,omitempty"`
}

// Error names the release and, for each failing service, its state,
// health output and last log lines.
func (g *GateFailure) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "release %s failed its health gate", g.Release)
	if g.Smoke != "" {
		fmt.Fprintf(&b, ": %s", g.Smoke)
	}
	for _, s := range g.Services {
		fmt.Fprintf(&b, "\n  %s: %s", s.Container, s.State)
		if s.Health != "" {
			fmt.Fprintf(&b, "\n    health: %s", s.Health)
		}
		if s.Logs != "" {
			fmt.Fprintf(&b, "\n    log:\n      %s", strings.ReplaceAll(s.Logs, "\n", "\n      "))
		}
	}
	return b.String()
}

// waitHealthy waits until every container of the project (only those
// whose compose service is in only, when only is not nil) is running and
// healthy, and there are at least want of them.
func (h *host) waitHealthy(ctx context.Context, release string, want int, timeout time.Duration, only map[string]bool) error {
	deadline := time.Now().Add(timeout)
	// The deadline is checked between the Engine's answers; an Engine
	// that stops answering (a failing SD card, with sshd still up) would
	// hold the gate, and the lock, for ever without a bound on the calls.
	wait := h.dockerAnswer()
	outer := ctx
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(wait))
	defer cancel()
	silent := func(err error) error {
		if outer.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s: the Docker Engine did not answer within %s of the health gate's %s: %w", h.name, wait, timeout, err)
		}
		return err
	}
	var last []container.Summary
	for {
		list, err := h.projectContainers(ctx)
		if err != nil {
			return silent(err)
		}
		healthy, broken := 0, false
		list = slices.DeleteFunc(list, func(c container.Summary) bool {
			return c.Labels["com.docker.compose.oneoff"] == "True" || only != nil && !only[c.Labels[composeServiceLabel]]
		})
		last = list
		for _, c := range list {
			st := c.State
			switch {
			case st == "exited" || st == "dead" || strings.Contains(c.Status, "unhealthy") || st == "restarting":
				broken = true
			case st == "running" && (strings.Contains(c.Status, "(healthy)") || !strings.Contains(c.Status, "health")):
				healthy++
			}
		}
		// Every container of the project, Consul included when it runs,
		// and at least every Lucid service.
		if healthy == len(list) && len(list) >= want && !broken {
			break
		}
		if broken || time.Now().After(deadline) {
			return silent(h.gateFailure(ctx, release, last))
		}
		select {
		case <-ctx.Done():
			return silent(ctx.Err())
		case <-time.After(time.Second):
		}
	}
	return nil
}

// composeServiceLabel names a container's compose service.
const composeServiceLabel = "com.docker.compose.service"

// gatewayHealth asks the gateway's /health through the SSH connection,
// over HTTPS when it serves TLS, and then only from a gateway serving
// leaf when that is given (the certificate the release shipped). A
// gateway still waiting for its first ACME certificate passes: the
// containers' healthchecks have spoken, and pending says why /health was
// not asked.
func (h *host) gatewayHealth(ctx context.Context, release, gatewayAddr string, leaf []byte) (pending, err error) {
	hc, scheme, pending, err := h.gatewayClient(ctx, gatewayAddr, leaf)
	if err != nil {
		return nil, &GateFailure{Release: release, Smoke: err.Error()}
	}
	if pending != nil {
		return pending, nil
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(scheme + "://" + gatewayAddr + "/health")
	if err != nil {
		return nil, &GateFailure{Release: release, Smoke: err.Error()}
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &GateFailure{Release: release, Smoke: "gateway /health: " + resp.Status}
	}
	return nil, nil
}

// inUse is the releases of rs that a running container of list runs from
// (its compose working directory): a deploy cut off after its compose up
// leaves its containers running from a release that is not current, and
// their bind mounts (the gateway's routes and certificates) live in its
// directory.
func (h *host) inUse(rs []Release, list []container.Summary) map[string]bool {
	used := map[string]bool{}
	for _, c := range list {
		if !live(c) {
			continue
		}
		wd := c.Labels["com.docker.compose.project.working_dir"]
		for _, r := range rs {
			if dir := h.releaseDir(r.ID); wd == dir || strings.HasPrefix(wd, dir+"/") {
				used[r.ID] = true
			}
		}
	}
	return used
}

// alwaysKept says which releases of rs a prune keeps whatever their age:
// the current one, the one a rollback returns to (however many failed
// deploys came between), and any a running container of list, the
// project's, works from.
func (h *host) alwaysKept(rs []Release, list []container.Summary) func(Release) bool {
	used := h.inUse(rs, list)
	back, _ := pickRollback(rs, "")
	return func(r Release) bool { return r.Current || back != nil && r.ID == back.ID || used[r.ID] }
}

// live reports whether c runs, or is about to again (restarting, paused).
func live(c container.Summary) bool {
	return c.State == "running" || c.State == "restarting" || c.State == "paused"
}

func (h *host) projectContainers(ctx context.Context) ([]container.Summary, error) {
	list, err := h.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+h.project))})
	if err != nil {
		return nil, fmt.Errorf("%s: docker ps: %w", h.name, err)
	}
	return list, nil
}

// gateFailure collects what went wrong for each unhealthy container.
func (h *host) gateFailure(ctx context.Context, release string, list []container.Summary) error {
	g := &GateFailure{Release: release}
	for _, c := range list {
		if c.State == "running" && (strings.Contains(c.Status, "(healthy)") || !strings.Contains(c.Status, "health")) {
			continue
		}
		name := strings.TrimPrefix(strings.Join(c.Names, ","), "/")
		sf := ServiceFailure{Container: name, State: c.Status}
		if in, err := h.docker.ContainerInspect(ctx, c.ID); err == nil && in.State != nil && in.State.Health != nil {
			if n := len(in.State.Health.Log); n > 0 {
				sf.Health = strings.TrimSpace(in.State.Health.Log[n-1].Output)
			}
		}
		if rc, err := h.docker.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: "15"}); err == nil {
			var out bytes.Buffer
			_, _ = stdcopy.StdCopy(&out, &out, io.LimitReader(rc, 64<<10))
			rc.Close()
			sf.Logs = strings.TrimSpace(out.String())
		}
		g.Services = append(g.Services, sf)
	}
	return g
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
