// Package deploy puts a release on a host over SSH: preflight, a deploy
// lock, the images without a registry (only the layers the host's Docker
// Engine lacks, streamed over the same connection), the release's compose
// and env files in a release directory, compose up, a health gate, and an
// automatic return to the previous release when the gate fails.
//
// A release lives in <dir>/releases/<id> (compose file with the images
// pinned to the release's own tags, env file, release.json); <dir>/current
// points at the live one and moves only after a release passed its gate.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/sshx"
)

// Options describe one deploy to one host.
type Options struct {
	// Name is the target's name in lucid.yaml, for messages.
	Name string
	// SSH is the open connection to the host.
	SSH *sshx.Client
	// Dir is the deploy directory on the host.
	Dir string
	// DockerSocket is the Engine's socket on the host.
	DockerSocket string
	// Compose is the rendered compose file; ImageName and Tag name the
	// images in it.
	Compose []byte
	// EnvFiles are the containers' env files by path relative to the
	// project (deployfiles.ServiceEnvPath), written with mode 0600. The
	// operator's own env file is never among them.
	EnvFiles map[string][]byte
	// Routes is the gateway's route table the compose file mounts
	// (deployfiles.RoutesPath); nil when it mounts none.
	Routes          []byte
	ImageName, Tag  string
	Version         string
	Images          []imagebuild.Built
	Network         string
	MinFreeBytes    int64
	MaxClockSkew    time.Duration
	HealthTimeout   time.Duration
	LockWait        time.Duration
	LockTTL         time.Duration
	KeepReleases    int
	GatewayHostPort int
	DryRun          bool
	// ViaRegistry, when set ("host:port/prefix"), sends the images through
	// that registry: pushed from here, pulled by the host's Engine.
	ViaRegistry string
	// InsecureRegistry allows plain HTTP to ViaRegistry.
	InsecureRegistry bool
	// Events hears every step (required).
	Events func(Event)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Event is one step of a deploy, for progress and --json.
type Event struct {
	Time    time.Time `json:"time"`
	Target  string    `json:"target"`
	Step    string    `json:"step"`
	Status  string    `json:"status"` // start, ok, fail, info, warn
	Message string    `json:"message,omitempty"`
	Bytes   int64     `json:"bytes,omitempty"`
	Total   int64     `json:"total,omitempty"`
}

// Result is what a deploy did.
type Result struct {
	Target     string     `json:"target"`
	Release    string     `json:"release"`
	Preflight  *Preflight `json:"preflight"`
	SentBytes  int64      `json:"sent_bytes"`
	SentLayers int        `json:"sent_layers"`
	KeptLayers int        `json:"kept_layers"`
	RolledBack string     `json:"rolled_back_to,omitempty"`
	DryRun     bool       `json:"dry_run"`
	// Plan, with DryRun: what would change.
	Plan *Plan `json:"plan,omitempty"`
}

// Plan is a dry run's answer.
type Plan struct {
	Files    []string `json:"files_changed"`
	Layers   int      `json:"layers_to_send"`
	Bytes    int64    `json:"bytes_to_send"`
	Services []string `json:"services_to_restart"`
}

func (o *Options) defaults() {
	if o.DockerSocket == "" {
		o.DockerSocket = "/var/run/docker.sock"
	}
	if o.Network == "" {
		o.Network = deployfiles.Network
	}
	if o.MaxClockSkew == 0 {
		o.MaxClockSkew = 5 * time.Minute
	}
	if o.HealthTimeout == 0 {
		o.HealthTimeout = 3 * time.Minute
	}
	if o.LockTTL == 0 {
		o.LockTTL = 30 * time.Minute
	}
	if o.KeepReleases == 0 {
		o.KeepReleases = 5
	}
	if o.GatewayHostPort == 0 {
		gw, _ := catalog.Lookup("gateway")
		o.GatewayHostPort = gw.Port
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Deploy runs one deploy.
func Deploy(ctx context.Context, o Options) (_ *Result, deployErr error) {
	o.defaults()
	emit := func(step, status, msg string) {
		o.Events(Event{Time: o.Now(), Target: o.Name, Step: step, Status: status, Message: msg})
	}
	res := &Result{Target: o.Name, DryRun: o.DryRun}
	h, err := newHost(o.Name, o.SSH, o.Dir, o.DockerSocket)
	if err != nil {
		return nil, err
	}
	defer h.docker.Close()

	emit("preflight", "start", "")
	var platforms []v1.Platform
	if len(o.Images) > 0 {
		for _, pi := range o.Images[0].Images {
			platforms = append(platforms, pi.Platform)
		}
	}
	pf, err := h.preflight(ctx, o, platforms, o.DryRun)
	if err != nil {
		emit("preflight", "fail", err.Error())
		return nil, err
	}
	res.Preflight = pf
	emit("preflight", "ok", fmt.Sprintf("docker %s, %s, %s, %d MiB free, clock %s, network %s", pf.Docker, pf.Compose, pf.Platform, pf.FreeBytes>>20, pf.ClockSkew, pf.Network))

	id := releaseID(o.Now(), o.Version)
	res.Release = id
	images, err := o.transferImages(pf.Platform, id)
	if err != nil {
		return nil, err
	}

	if !o.DryRun {
		emit("lock", "start", "")
		held, release, err := o.holdLock(ctx, h, emit)
		if err != nil {
			emit("lock", "fail", err.Error())
			return nil, err
		}
		defer release()
		emit("lock", "ok", h.lockPath())
		ctx = held
		defer func() { deployErr = lockLost(held, deployErr) }()
	}

	prev, err := h.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", o.Name, err)
	}
	// Through a registry the host pulls what it lacks itself: nothing is
	// sent over SSH, so there is nothing to ask its Engine.
	plan := &TransferPlan{Images: images}
	if o.ViaRegistry == "" {
		if plan, err = planTransfer(ctx, h.docker, images); err != nil {
			return nil, err
		}
	}
	res.SentLayers, res.KeptLayers = len(plan.Send), plan.KeptLayers
	compose, err := pinImages(o.Compose, o.ImageName, o.Tag, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}

	if o.DryRun {
		res.Plan = o.dryRunPlan(ctx, h, prev, plan)
		emit("plan", "ok", fmt.Sprintf("%d files change, %d layers (%d bytes) to send, restart %s",
			len(res.Plan.Files), res.Plan.Layers, res.Plan.Bytes, strings.Join(res.Plan.Services, ", ")))
		return res, nil
	}

	if o.ViaRegistry != "" {
		emit("images", "start", "through "+o.ViaRegistry)
		if err := o.throughRegistry(ctx, h, images); err != nil {
			emit("images", "fail", err.Error())
			return nil, fmt.Errorf("%s: %w (nothing was changed; the previous release still runs)", o.Name, err)
		}
		emit("images", "ok", "pulled by the host from "+o.ViaRegistry)
		return o.rollout(ctx, h, res, prev, images, compose, id, emit)
	}
	how := "only the missing layers"
	if plan.Full {
		how = "all layers: the host's containerd image store cannot skip any"
	}
	emit("images", "start", fmt.Sprintf("%d layers to send (%d bytes), %d already there; %s", len(plan.Send), plan.SendBytes, plan.KeptLayers, how))
	var lastReport time.Time
	res.SentBytes, err = plan.load(ctx, h.docker, func(sent int64) {
		if time.Since(lastReport) > 200*time.Millisecond {
			lastReport = time.Now()
			o.Events(Event{Time: o.Now(), Target: o.Name, Step: "images", Status: "info", Bytes: sent, Total: plan.SendBytes})
		}
	})
	if err != nil {
		emit("images", "fail", err.Error())
		return nil, fmt.Errorf("%s: %w (nothing was changed; the previous release still runs)", o.Name, err)
	}
	o.Events(Event{Time: o.Now(), Target: o.Name, Step: "images", Status: "ok", Bytes: res.SentBytes, Total: plan.SendBytes,
		Message: fmt.Sprintf("%d layers sent, %d kept", len(plan.Send), plan.KeptLayers)})
	return o.rollout(ctx, h, res, prev, images, compose, id, emit)
}

// rollout writes the release, starts it, gates it, and either makes it
// current or brings the previous release back.
func (o *Options) rollout(ctx context.Context, h *host, res *Result, prev *Release, images []TransferImage, compose []byte, id string, emit func(step, status, msg string)) (*Result, error) {
	rel := Release{ID: id, Version: o.Version, Created: o.Now().UTC(), By: localUser() + "@" + localHost(), Images: imageIDs(images), Status: "deploying"}
	emit("release", "start", id)
	if err := h.writeRelease(ctx, rel, compose, o.EnvFiles, o.Routes); err != nil {
		emit("release", "fail", err.Error())
		return nil, fmt.Errorf("%s: write release %s: %w (the previous release still runs)", o.Name, id, err)
	}
	emit("release", "ok", h.releaseDir(id))

	emit("up", "start", "")
	gateErr := h.up(ctx, id)
	if gateErr != nil {
		// Compose gives up when a dependency never turns healthy; say
		// which services failed, as the gate would.
		if list, lerr := h.projectContainers(ctx); lerr == nil {
			if gf, ok := h.gateFailure(ctx, id, list).(*GateFailure); ok && len(gf.Services) > 0 {
				gf.Smoke = gateErr.Error()
				gateErr = gf
			}
		}
	} else {
		emit("up", "ok", "")
		emit("health", "start", fmt.Sprintf("every service healthy within %s, then the gateway's /health", o.HealthTimeout))
		gateErr = h.gate(ctx, id, len(catalog.Services), o.HealthTimeout, "127.0.0.1:"+strconv.Itoa(o.GatewayHostPort))
	}
	if gateErr == nil {
		rel.Status = "live"
		if err := h.makeCurrent(ctx, id); err != nil {
			return nil, fmt.Errorf("%s: point current at %s: %w", o.Name, id, err)
		}
		_ = h.writeRecord(ctx, rel)
		if prev != nil {
			prev.Status = "replaced"
			_ = h.writeRecord(ctx, *prev)
		}
		emit("health", "ok", "release "+id+" is live")
		h.prune(ctx, *o, emit)
		return res, nil
	}

	emit("health", "fail", gateErr.Error())
	rel.Status = "failed"
	_ = h.writeRecord(context.WithoutCancel(ctx), rel)
	if prev == nil {
		return nil, fmt.Errorf("%s: %w (no previous release to return to)", o.Name, gateErr)
	}
	emit("rollback", "start", "back to "+prev.ID)
	if err := h.up(context.WithoutCancel(ctx), prev.ID); err != nil {
		emit("rollback", "fail", err.Error())
		return nil, fmt.Errorf("%s: %w; and the rollback to %s failed: %v", o.Name, gateErr, prev.ID, err)
	}
	if err := h.gate(context.WithoutCancel(ctx), prev.ID, len(catalog.Services), o.HealthTimeout, "127.0.0.1:"+strconv.Itoa(o.GatewayHostPort)); err != nil {
		emit("rollback", "fail", err.Error())
		return nil, fmt.Errorf("%s: %w; and the previous release %s is not healthy either: %v", o.Name, gateErr, prev.ID, err)
	}
	emit("rollback", "ok", "release "+prev.ID+" is serving again")
	res.RolledBack = prev.ID
	return res, &RolledBackError{Release: id, Previous: prev.ID, Cause: gateErr}
}

// throughRegistry pushes the images to ViaRegistry and has the host's
// Engine pull them and tag them as a direct transfer would.
func (o *Options) throughRegistry(ctx context.Context, h *host, images []TransferImage) error {
	var nameOpts []name.Option
	if o.InsecureRegistry {
		nameOpts = append(nameOpts, name.Insecure)
	}
	for _, ti := range images {
		// Tags[1] is repo:lucid-<release>; the registry copy keeps the
		// repository's last element and the release tag.
		rel := ti.Tags[1]
		cut := strings.LastIndex(rel, ":")
		via := strings.TrimSuffix(o.ViaRegistry, "/") + "/" + path.Base(rel[:cut]) + rel[cut:]
		ref, err := name.NewTag(via, nameOpts...)
		if err != nil {
			return fmt.Errorf("registry reference %q: %w", via, err)
		}
		if err := remote.Write(ref, ti.Image, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", via, err)
		}
		rc, err := h.docker.ImagePull(ctx, via, image.PullOptions{})
		if err != nil {
			return fmt.Errorf("the host pulling %s: %w", via, err)
		}
		err = jsonStreamError(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("the host pulling %s: %w", via, err)
		}
		for _, tag := range ti.Tags {
			if err := h.docker.ImageTag(ctx, via, tag); err != nil {
				return fmt.Errorf("tag %s: %w", tag, err)
			}
		}
	}
	return nil
}

// jsonStreamError reads a Docker progress stream to its end and returns
// the error it reports, if any (the HTTP status says nothing).
func jsonStreamError(r io.Reader) error {
	return jsonmessage.DisplayJSONMessagesStream(r, io.Discard, 0, false, nil)
}

// RolledBackError is a deploy whose release failed and was replaced by the
// previous one, which serves again.
type RolledBackError struct {
	Release, Previous string
	Cause             error
}

func (e *RolledBackError) Error() string {
	return fmt.Sprintf("%v\nrolled back to release %s, which serves again", e.Cause, e.Previous)
}

func (e *RolledBackError) Unwrap() error { return e.Cause }

// transferImages picks each service's image for the host's platform and
// tags it with the configured tag and the release's own.
func (o *Options) transferImages(platform, id string) ([]TransferImage, error) {
	var out []TransferImage
	for _, b := range o.Images {
		var img v1.Image
		for _, pi := range b.Images {
			if pi.Platform.String() == platform {
				img = pi.Image
			}
		}
		if img == nil {
			return nil, fmt.Errorf("%s: no image of %s for %s", o.Name, b.Ref, platform)
		}
		out = append(out, TransferImage{Service: b.Service, Image: img, Tags: []string{b.Ref, releaseTag(b.Ref, id)}})
	}
	return out, nil
}

// releaseTag is ref with the release's tag: repo:lucid-<id>.
func releaseTag(ref, id string) string {
	repo := ref
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo = ref[:i]
	}
	return repo + ":lucid-" + id
}

// pinImages points the compose file's images at the release's tags, so a
// rollback runs exactly the images that release had. Every service must be
// pinned: an unpinned one would run whatever its tag points at later.
func pinImages(compose []byte, name, tag, id string) ([]byte, error) {
	s := strings.ReplaceAll(string(compose), "\r\n", "\n")
	for _, svc := range catalog.Services {
		ref := deployfiles.Image(name, tag, svc)
		line := "image: " + ref + "\n"
		if !strings.Contains(s, line) {
			return nil, fmt.Errorf("the compose file does not run %s as `image: %s` (render it again with lucidctl render)", svc.Name, ref)
		}
		s = strings.ReplaceAll(s, line, "image: "+releaseTag(ref, id)+"\n")
	}
	return []byte(s), nil
}

// imageIDs maps each service to its image ID (the config digest).
func imageIDs(images []TransferImage) map[string]string {
	m := map[string]string{}
	for _, ti := range images {
		if d, err := ti.Image.ConfigName(); err == nil {
			m[ti.Service] = d.String()
		}
	}
	return m
}

// holdLock takes the host's deploy lock for this deploy or rollback and
// keeps it until release, which says so if renewing it ever failed. The
// deploy goes on with the returned context, which ends if the lock is
// lost to another deploy.
func (o *Options) holdLock(ctx context.Context, h *host, emit func(step, status, msg string)) (held context.Context, release func(), err error) {
	me := lockInfo{Host: localHost(), PID: os.Getpid(), User: localUser()}
	held, unlock, err := h.holdLock(ctx, me, o.LockWait, o.LockTTL, o.Now, func(m string) { emit("lock", "info", m) })
	if err != nil {
		return nil, nil, err
	}
	return held, func() {
		if err := unlock(); err != nil {
			emit("lock", "warn", err.Error())
		}
	}, nil
}

// lockLost puts a step's failure in words when it came of losing the
// lock: a context that ended for that reason says so, not "canceled".
func lockLost(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errLockTaken) {
		return fmt.Errorf("%w; this deploy stopped (%v)", errLockTaken, err)
	}
	return err
}

// dryRunPlan says what a deploy would change, without changing anything.
func (o *Options) dryRunPlan(ctx context.Context, h *host, prev *Release, plan *TransferPlan) *Plan {
	p := &Plan{Layers: len(plan.Send), Bytes: plan.SendBytes}
	type file struct {
		rel string
		new []byte
		pin bool // written with the images pinned to the release
	}
	files := []file{{deployfiles.ComposePath, o.Compose, true}}
	for _, p := range slices.Sorted(maps.Keys(o.EnvFiles)) {
		files = append(files, file{p, o.EnvFiles[p], false})
	}
	if o.Routes != nil {
		files = append(files, file{deployfiles.RoutesPath, o.Routes, false})
	}
	if prev == nil {
		for _, f := range files {
			p.Files = append(p.Files, f.rel)
		}
	} else {
		for _, f := range files {
			old, _ := h.ssh.Run(ctx, "cat "+sshx.Quote(h.releaseDir(prev.ID)+"/"+f.rel), nil)
			cur := f.new
			if f.pin {
				cur, _ = pinImages(f.new, o.ImageName, o.Tag, prev.ID)
			}
			if string(old) != string(cur) {
				p.Files = append(p.Files, f.rel)
			}
		}
	}
	ids := imageIDs(plan.Images)
	for _, s := range catalog.Services {
		if prev == nil || prev.Images[s.Name] != ids[s.Name] {
			p.Services = append(p.Services, s.Name)
		}
	}
	return p
}

// prune removes releases beyond the newest KeepReleases, with their tags.
func (h *host) prune(ctx context.Context, o Options, emit func(step, status, msg string)) {
	rs, err := h.releases(ctx)
	if err != nil || len(rs) <= o.KeepReleases {
		return
	}
	for _, r := range rs[o.KeepReleases:] {
		if r.Current {
			continue
		}
		for _, s := range catalog.Services {
			_, _ = h.run(ctx, "docker rmi "+sshx.Quote(releaseTag(deployfiles.Image(o.ImageName, o.Tag, s), r.ID))+" >/dev/null 2>&1; true")
		}
		if _, err := h.run(ctx, "rm -rf "+sshx.Quote(h.releaseDir(r.ID))); err == nil {
			emit("prune", "info", "removed release "+r.ID)
		}
	}
}

// releaseID names a release by time (sortable) and version.
func releaseID(t time.Time, version string) string {
	id := t.UTC().Format("20060102T150405Z")
	if v := strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return -1
	}, version); v != "" {
		id += "-" + v
	}
	return id
}

func localUser() string {
	if u := sshx.LocalUser(os.Getenv); u != "" {
		return u
	}
	return "unknown"
}

func localHost() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// ErrNoRelease is asked for a release the host does not have.
var ErrNoRelease = errors.New("no such release")

// Releases lists the host's releases, newest first.
func Releases(ctx context.Context, ssh *sshx.Client, dir string) ([]Release, error) {
	h := &host{name: ssh.Addr(), ssh: ssh, dir: dir}
	return h.releases(ctx)
}

// Rollback brings release id back (by default the newest release older
// than the current one that went live), gates it, and makes it current.
func Rollback(ctx context.Context, o Options, id string) (_ string, rollbackErr error) {
	o.defaults()
	emit := func(step, status, msg string) {
		o.Events(Event{Time: o.Now(), Target: o.Name, Step: step, Status: status, Message: msg})
	}
	h, err := newHost(o.Name, o.SSH, o.Dir, o.DockerSocket)
	if err != nil {
		return "", err
	}
	defer h.docker.Close()
	if _, err := h.preflight(ctx, o, nil, false); err != nil {
		return "", err
	}
	rs, err := h.releases(ctx)
	if err != nil {
		return "", err
	}
	var target *Release
	seenCurrent := false
	for i := range rs {
		r := &rs[i]
		switch {
		case id != "" && r.ID == id:
			target = r
		case id == "" && r.Current:
			seenCurrent = true
		case id == "" && seenCurrent && target == nil && (r.Status == "replaced" || r.Status == "live"):
			target = r
		}
	}
	if target == nil {
		if id == "" {
			return "", fmt.Errorf("%s: %w: no earlier release that went live", o.Name, ErrNoRelease)
		}
		return "", fmt.Errorf("%s: %w %q", o.Name, ErrNoRelease, id)
	}
	held, release, err := o.holdLock(ctx, h, emit)
	if err != nil {
		return "", err
	}
	defer release()
	ctx = held
	defer func() { rollbackErr = lockLost(held, rollbackErr) }()
	emit("rollback", "start", target.ID)
	if err := h.up(ctx, target.ID); err != nil {
		emit("rollback", "fail", err.Error())
		return "", err
	}
	if err := h.gate(ctx, target.ID, len(catalog.Services), o.HealthTimeout, "127.0.0.1:"+strconv.Itoa(o.GatewayHostPort)); err != nil {
		emit("rollback", "fail", err.Error())
		return "", err
	}
	if err := h.makeCurrent(ctx, target.ID); err != nil {
		return "", err
	}
	for _, r := range rs {
		if r.Current && r.ID != target.ID {
			r.Status = "replaced"
			_ = h.writeRecord(ctx, r)
		}
	}
	target.Status = "live"
	_ = h.writeRecord(ctx, *target)
	emit("rollback", "ok", "release "+target.ID+" is live")
	return target.ID, nil
}
