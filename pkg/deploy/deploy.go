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

// Config is one target and how to deploy to it: the connection, the
// deploy directory, the limits, the clock and who hears the events.
type Config struct {
	// Name is the target's name in lucid.yaml, for messages and events.
	Name string
	// SSH is the open connection to the host; the caller closes it.
	SSH *sshx.Client
	// Dir is the deploy directory on the host.
	Dir string
	// DockerSocket is the Engine's socket on the host (default
	// /var/run/docker.sock).
	DockerSocket string
	// Project is the compose project of the target's releases (default
	// ComposeProject): every container looked at or changed carries it.
	Project string
	// ImageName and Tag name the images in the rendered compose file
	// (lucid.yaml's images.name and images.tag).
	ImageName, Tag string
	// Network is the external network the services share (default
	// deployfiles.Network).
	Network string
	// MinFreeBytes is the free disk the deploy directory needs.
	MinFreeBytes int64
	// MaxClockSkew is how far the host's clock may be off (default 5m).
	MaxClockSkew time.Duration
	// HealthTimeout is how long every service gets to become healthy
	// (default 3m).
	HealthTimeout time.Duration
	// LockWait is how long to wait for another deploy's lock.
	LockWait time.Duration
	// LockTTL is how long a lock lives unless renewed (default 30m).
	LockTTL time.Duration
	// KeepReleases is how many releases stay on the host (default 5).
	KeepReleases int
	// GatewayHostPort is the gateway's port on the host, for the gate's
	// last check (default: the port its container publishes for its main
	// listener, else the catalog's).
	GatewayHostPort int
	// BeforeUp, when set, is called under the deploy lock just before the
	// host's services go down: a deploy's once the images are on the
	// host, before the release is written and goes up, a Rollback's, and
	// a Restart's or Stop's that takes the engine down. It is a check that must still
	// hold then (a cluster's quorum), not only when the command began. An
	// error stops there, with nothing changed.
	BeforeUp func(ctx context.Context) error
	// ViaRegistry, when set ("host:port/prefix"), sends the images through
	// that registry: pushed from here, pulled by the host's Engine.
	ViaRegistry string
	// InsecureRegistry allows plain HTTP to ViaRegistry.
	InsecureRegistry bool
	// OperatorToken is the operator's token (LUCID_OPERATOR_TOKEN), to read
	// the engine's consensus status with for the caught-up gate (only the
	// credential derived from it for the engine on this target is sent,
	// through the connection), and to check that a deploy's env files are
	// bound to this target; without it that gate is skipped with a
	// warning, and the check too.
	OperatorToken string
	// Reporter hears every event (default: none).
	Reporter Reporter
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.DockerSocket == "" {
		c.DockerSocket = "/var/run/docker.sock"
	}
	if c.Project == "" {
		c.Project = ComposeProject
	}
	if c.Network == "" {
		c.Network = deployfiles.Network
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = 5 * time.Minute
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = 3 * time.Minute
	}
	if c.LockTTL == 0 {
		c.LockTTL = 30 * time.Minute
	}
	if c.KeepReleases == 0 {
		c.KeepReleases = 5
	}
	if c.Reporter == nil {
		c.Reporter = ReporterFunc(func(Event) {})
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Deployer deploys to one target, rolls it back and lists its releases.
// Make one per target with New and Close it when done.
type Deployer struct {
	cfg Config
	h   *host
}

// New returns the Deployer of the target c describes.
func New(c Config) (*Deployer, error) {
	c.defaults()
	h, err := newHost(c.Name, c.SSH, c.Dir, c.DockerSocket, c.Project)
	if err != nil {
		return nil, fmt.Errorf("%s: docker client: %w", c.Name, err)
	}
	return &Deployer{cfg: c, h: h}, nil
}

// Close lets go of the Deployer's Docker client; the SSH connection is
// the caller's.
func (d *Deployer) Close() error { return d.h.docker.Close() }

// emit reports an event of this target, now.
func (d *Deployer) emit(step Step, status EventStatus, msg string) {
	d.cfg.Reporter.Event(Event{Time: d.cfg.Now(), Target: d.cfg.Name, Step: step, Status: status, Message: msg})
}

// Bundle is what a deploy puts on a host: the rendered files and the
// images.
type Bundle struct {
	// Compose is the rendered compose file; Config's ImageName and Tag
	// name the images in it.
	Compose []byte
	// EnvFiles are the containers' env files by path relative to the
	// project (deployfiles.ServiceEnvPath), written with mode 0600, their
	// operator credentials bound to the target
	// (deployfiles.BindOperatorCredentials). The operator's own env file
	// is never among them.
	EnvFiles map[string][]byte
	// Routes is the gateway's route table the compose file mounts
	// (deployfiles.RoutesPath); nil when it mounts none.
	Routes []byte
	// TLS are the gateway's TLS files the compose file mounts, by name in
	// deployfiles.TLSDir (deployfiles.TLSFileNames); nil when it mounts
	// none. Each release gets its own copy, readable by the gateway's
	// container alone, and a rollback brings it back with the release.
	TLS map[string][]byte
	// MeshCASeed are a cluster's mesh CA seed files the compose file
	// mounts into the mesh controller, by name in
	// deployfiles.MeshCASeedDir (deployfiles.MeshCASeedFileNames); nil
	// outside a cluster. Placed like TLS, readable by the controller's
	// container alone.
	MeshCASeed map[string][]byte
	// Version is the version the images were built as.
	Version string
	// Images are the six services' images, for one or more platforms.
	Images []imagebuild.Built
	// Rotate names the data-bound secrets (deployfiles.DataBound) the
	// release may replace; any other that differs from the host's current
	// release's refuses the deploy (a *SecretChangeError).
	Rotate []string
}

// Result is what a deploy did, or with DryRun would do. A deploy that
// fails returns none: its error says what happened (a *RolledBackError
// when the previous release serves again).
type Result struct {
	Target     string     `json:"target"`
	Release    string     `json:"release"`
	Preflight  *Preflight `json:"preflight"`
	SentBytes  int64      `json:"sent_bytes"`
	SentLayers int        `json:"sent_layers"`
	KeptLayers int        `json:"kept_layers"`
	DryRun     bool       `json:"dry_run"`
	// Plan, with DryRun: what would change.
	Plan *Plan `json:"plan,omitempty"`
	// AuditError says the deploy, which succeeded, is missing from the
	// host's audit log.
	AuditError string `json:"audit_error,omitempty"`
}

// Plan is a dry run's answer.
type Plan struct {
	Files    []string `json:"files_changed"`
	Layers   int      `json:"layers_to_send"`
	Bytes    int64    `json:"bytes_to_send"`
	Services []string `json:"services_to_restart"`
}

// Deploy puts b on the host as a new release and makes it current once it
// passes its health gate; a release that fails the gate is replaced by the
// previous one again (a *RolledBackError).
func (d *Deployer) Deploy(ctx context.Context, b Bundle) (*Result, error) {
	return d.deploy(ctx, b, false)
}

// DryRun says what Deploy would change (files, layers, services to
// restart) and changes nothing.
func (d *Deployer) DryRun(ctx context.Context, b Bundle) (*Result, error) {
	return d.deploy(ctx, b, true)
}

func (d *Deployer) deploy(ctx context.Context, b Bundle, dry bool) (_ *Result, deployErr error) {
	name := d.cfg.Name
	res := &Result{Target: name, DryRun: dry}
	if err := errors.Join(tlsDir.check(b.TLS), seedDir.check(b.MeshCASeed)); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var platforms []v1.Platform
	if len(b.Images) > 0 {
		for _, pi := range b.Images[0].Images {
			platforms = append(platforms, pi.Platform)
		}
	}
	if err := d.checkBound(b.EnvFiles); err != nil {
		return nil, err
	}
	pf, err := d.preflight(ctx, platforms, dry)
	if err != nil {
		return nil, err
	}
	res.Preflight = pf
	// Before the lock, the images and the release: a host that holds data
	// keeps its secrets unless told otherwise.
	checked, err := d.checkSecretsStep(ctx, b.EnvFiles, b.Rotate)
	if err != nil {
		return nil, err
	}

	var id string // named under the lock
	if !dry {
		// Recorded however it ends; a trail that cannot be written never
		// undoes a release that went live, and is said either way.
		defer func() {
			deployErr = d.auditOutcome(ctx, AuditEntry{Action: AuditDeploy, Release: id, Args: []string{"version=" + b.Version}}, deployErr, func(msg string) { res.AuditError = msg })
		}()
	}

	confirmLock := func(context.Context) error { return nil }
	if !dry {
		held, release, confirm, err := d.holdLockConfirmed(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
		ctx, confirmLock = held, confirm
		defer func() { deployErr = lockLost(held, deployErr) }()
	}

	rs, err := d.h.releases(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", name, err)
	}
	_, prev := pickRollback(rs, "")
	// After every release the host has, whatever the clock of the machine
	// that made it: ids order releases as they were made, which is what
	// a rollback goes back along, and no two deploys share one.
	id = nextReleaseID(d.cfg.Now(), b.Version, rs)
	res.Release = id
	images, err := d.transferImages(b.Images, pf.Platform, id)
	if err != nil {
		return nil, err
	}
	if cur := currentID(prev); !dry && cur != checked {
		// Another deploy went live while this one waited for the lock
		// (one that rotated a secret, say): its secrets are the ones to
		// keep now.
		if _, err := d.checkSecretsStep(ctx, b.EnvFiles, b.Rotate); err != nil {
			return nil, err
		}
	}
	// Through a registry the host pulls what it lacks itself: nothing is
	// sent over SSH, so there is nothing to ask its Engine.
	plan := &TransferPlan{Images: images}
	if d.cfg.ViaRegistry == "" {
		if plan, err = planTransfer(ctx, d.h.docker, images); err != nil {
			return nil, err
		}
	}
	res.SentLayers, res.KeptLayers = len(plan.Send), plan.KeptLayers
	compose, err := pinImages(b.Compose, d.cfg.ImageName, d.cfg.Tag, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ids, err := imageIDs(images)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}

	if dry {
		if res.Plan, err = d.dryRunPlan(ctx, b, prev, plan, ids); err != nil {
			d.emit(StepPlan, EventFail, err.Error())
			return nil, fmt.Errorf("%s: plan: %w", name, err)
		}
		d.emit(StepPlan, EventOK, fmt.Sprintf("%d files change, %d layers (%d bytes) to send, restart %s",
			len(res.Plan.Files), res.Plan.Layers, res.Plan.Bytes, strings.Join(res.Plan.Services, ", ")))
		return res, nil
	}

	if res.SentBytes, err = d.sendImages(ctx, plan, images); err != nil {
		return nil, fmt.Errorf("%s: %w (nothing was changed; the previous release still runs)", name, err)
	}
	if d.cfg.BeforeUp != nil {
		if err := d.cfg.BeforeUp(ctx); err != nil {
			return nil, err
		}
	}
	rel := &Release{ID: id, Version: b.Version, Created: d.cfg.Now().UTC(), By: localUser() + "@" + localHost(), Images: ids}
	if err := d.rollout(ctx, b, rel, compose, prev, confirmLock); err != nil {
		return nil, err // a *RolledBackError when the previous release serves again
	}
	return res, nil
}

// sendImages puts the images on the host, over the connection or through
// the registry, and returns the bytes sent over the connection.
func (d *Deployer) sendImages(ctx context.Context, plan *TransferPlan, images []TransferImage) (int64, error) {
	if via := d.cfg.ViaRegistry; via != "" {
		d.emit(StepImages, EventStart, "through "+via)
		if err := d.throughRegistry(ctx, images); err != nil {
			d.emit(StepImages, EventFail, err.Error())
			return 0, err
		}
		d.emit(StepImages, EventOK, "pulled by the host from "+via)
		return 0, nil
	}
	how := "only the missing layers"
	if plan.Full {
		how = "all layers: the host's containerd image store cannot skip any"
	}
	d.emit(StepImages, EventStart, fmt.Sprintf("%d layers to send (%d bytes), %d already there; %s", len(plan.Send), plan.SendBytes, plan.KeptLayers, how))
	var lastReport time.Time
	sent, err := plan.load(ctx, d.h.docker, func(sent int64) {
		if time.Since(lastReport) > 200*time.Millisecond {
			lastReport = time.Now()
			d.cfg.Reporter.Event(Event{Time: d.cfg.Now(), Target: d.cfg.Name, Step: StepImages, Status: EventInfo, Bytes: sent, Total: plan.SendBytes})
		}
	})
	if err != nil {
		d.emit(StepImages, EventFail, err.Error())
		return sent, err
	}
	d.cfg.Reporter.Event(Event{Time: d.cfg.Now(), Target: d.cfg.Name, Step: StepImages, Status: EventOK, Bytes: sent, Total: plan.SendBytes,
		Message: fmt.Sprintf("%d layers sent, %d kept", len(plan.Send), plan.KeptLayers)})
	return sent, nil
}

// rollout writes release rel, activates it, and when it fails its gate
// records it failed and activates prev again, if the lock (confirmLock)
// is still this deploy's.
func (d *Deployer) rollout(ctx context.Context, b Bundle, rel *Release, compose []byte, prev *Release, confirmLock func(context.Context) error) error {
	name := d.cfg.Name
	d.emit(StepRelease, EventStart, rel.ID)
	image := func(service string) string {
		s, _ := catalog.Lookup(service)
		return releaseTag(deployfiles.Image(d.cfg.ImageName, d.cfg.Tag, s), rel.ID)
	}
	private := []privateFiles{
		{tlsDir, image(catalog.GatewayService), b.TLS},
		{seedDir, image(catalog.MeshService), b.MeshCASeed},
	}
	if err := d.h.writeRelease(ctx, rel, compose, b.EnvFiles, b.Routes, private); err != nil {
		d.emit(StepRelease, EventFail, err.Error())
		return fmt.Errorf("%s: write release %s: %w (the previous release still runs)", name, rel.ID, err)
	}
	d.emit(StepRelease, EventOK, d.h.releaseDir(rel.ID))

	live, gateErr := d.activate(ctx, rel, prev, leafOf(b.TLS[deployfiles.TLSCertName]), true)
	switch {
	case gateErr == nil:
		d.prune(ctx)
		return nil
	case live:
		// It passed its gate and serves: going back would undo a good
		// release. The records are what failed, and the error says so.
		return fmt.Errorf("%s: release %s serves, but: %w", name, rel.ID, gateErr)
	}

	return d.returnTo(ctx, rel, prev, gateErr, confirmLock, true)
}

// returnTo brings prev back after rel, whose containers replaced prev's,
// failed its gate with gateErr (a deploy's new release, or a rollback's
// target), if the lock (confirmLock) is still this run's. With
// recordFailed, rel is recorded failed once back. The way back runs to its end
// whatever happens to ctx: an interrupt must not leave the host with
// nothing serving.
func (d *Deployer) returnTo(ctx context.Context, rel, prev *Release, gateErr error, confirmLock func(context.Context) error, recordFailed bool) error {
	name := d.cfg.Name
	bg := context.WithoutCancel(ctx)
	if err := confirmLock(bg); errors.Is(err, errLockTaken) || errors.Is(context.Cause(ctx), errLockTaken) {
		// The host is another deploy's now: it decides what runs there,
		// and this one records and starts nothing more.
		return fmt.Errorf("%s: %w (release %s did not pass its gate and is left as it is; the other deploy decides what runs)", name, gateErr, rel.ID)
	}
	// rel is recorded failed once the way back has run (or when there is
	// none): cut off on the way (the laptop or the link gone), rel stays
	// deploying, and a rollback sees a deploy cut short, whose containers
	// may run, and brings current back rather than the release before it.
	recordRel := func() error {
		if !recordFailed {
			return nil
		}
		err := d.h.record(bg, rel, ReleaseFailed)
		if err != nil {
			d.emit(StepRelease, EventFail, err.Error())
		}
		return err
	}
	if prev == nil {
		return errors.Join(fmt.Errorf("%s: %w (no previous release to return to)", name, gateErr), recordRel())
	}
	d.emit(StepRollback, EventStart, "back to "+prev.ID)
	// Back without the caught-up gate: the previous release serving again
	// is what matters now, and Raft catches its engine up either way.
	if _, err := d.activate(bg, prev, nil, nil, false); err != nil {
		d.emit(StepRollback, EventFail, err.Error())
		return errors.Join(fmt.Errorf("%s: %w; and the return to the previous release %s failed: %w", name, gateErr, prev.ID, err), recordRel())
	}
	d.emit(StepRollback, EventOK, "release "+prev.ID+" is serving again")
	return errors.Join(&RolledBackError{Release: rel.ID, Previous: prev.ID, Cause: gateErr}, recordRel())
}

// activate is the one way a release goes live, for a deploy's new release,
// a rollback's target, and the previous release a failed deploy returns
// to: compose up, the health gate, then current points at r, r is
// recorded live, and replaces (the release current before, if any) is
// recorded replaced. live reports whether r passed its gate: then it
// serves, even when err says current or a record could not be written.
// leaf, when given, is the certificate the gateway must serve (the one r
// shipped). With caughtUp the gate ends, for an engine of a Raft cluster,
// with its catching up with the cluster, within the same HealthTimeout.
func (d *Deployer) activate(ctx context.Context, r, replaces *Release, leaf []byte, caughtUp bool) (live bool, err error) {
	d.emit(StepUp, EventStart, r.ID)
	if err := d.h.up(ctx, r.ID, d.h.upLimit(d.cfg.HealthTimeout)); err != nil {
		// Compose gives up when a dependency never turns healthy; say
		// which services failed, as the gate would. Asked within a
		// bound of its own: compose may have failed because the Engine
		// stopped answering, and this runs on the way back too, which
		// no interrupt ends.
		lctx, cancel := context.WithTimeout(ctx, d.h.dockerAnswer())
		if list, lerr := d.h.projectContainers(lctx); lerr == nil {
			var gf *GateFailure
			if errors.As(d.h.gateFailure(lctx, r.ID, list), &gf) && len(gf.Services) > 0 {
				gf.Smoke = err.Error()
				err = gf
			}
		}
		cancel()
		d.emit(StepUp, EventFail, err.Error())
		return false, err
	}
	d.emit(StepUp, EventOK, "")
	d.emit(StepHealth, EventStart, fmt.Sprintf("every service healthy within %s, then the gateway's /health", d.cfg.HealthTimeout))
	deadline := time.Now().Add(d.cfg.HealthTimeout)
	if err := d.h.waitHealthy(ctx, r.ID, len(catalog.Services), d.cfg.HealthTimeout, nil); err != nil {
		d.emit(StepHealth, EventFail, err.Error())
		return false, err
	}
	pending, err := d.h.gatewayHealth(ctx, r.ID, d.gatewayAddr(ctx), leaf)
	if err != nil {
		d.emit(StepHealth, EventFail, err.Error())
		return false, err
	}
	if pending != nil {
		d.emit(StepHealth, EventInfo, pending.Error())
	}
	d.emit(StepHealth, EventOK, "")
	if caughtUp {
		if err := d.caughtUpGate(ctx, r.ID, deadline); err != nil {
			return false, err
		}
	}
	return true, d.commit(ctx, r, replaces)
}

// commit makes r, which passed its gate, the current release and records
// it (and the release it replaces) so. Every failure is returned.
func (d *Deployer) commit(ctx context.Context, r, replaces *Release) error {
	if err := d.h.makeCurrent(ctx, r.ID); err != nil {
		err = fmt.Errorf("point current at %s: %w", r.ID, err)
		d.emit(StepActivate, EventFail, err.Error())
		return err
	}
	var errs []error
	if err := d.h.record(ctx, r, ReleaseLive); err != nil {
		errs = append(errs, err)
	}
	if replaces != nil && replaces.ID != r.ID {
		if err := d.h.record(ctx, replaces, ReleaseReplaced); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.emit(StepActivate, EventFail, err.Error())
		return err
	}
	d.emit(StepActivate, EventOK, "release "+r.ID+" is live")
	return nil
}

// throughRegistry pushes the images to ViaRegistry and has the host's
// Engine pull them and tag them as a direct transfer would.
func (d *Deployer) throughRegistry(ctx context.Context, images []TransferImage) error {
	h := d.h
	var nameOpts []name.Option
	if d.cfg.InsecureRegistry {
		nameOpts = append(nameOpts, name.Insecure)
	}
	for _, ti := range images {
		// Tags[1] is repo:lucid-<release>; the registry copy keeps the
		// repository's last element and the release tag.
		rel := ti.Tags[1]
		cut := strings.LastIndex(rel, ":")
		via := strings.TrimSuffix(d.cfg.ViaRegistry, "/") + "/" + path.Base(rel[:cut]) + rel[cut:]
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

// Error is the gate's failure and where the host is now.
func (e *RolledBackError) Error() string {
	return fmt.Sprintf("%v\nrolled back to release %s, which serves again", e.Cause, e.Previous)
}

// Unwrap returns the gate's failure.
func (e *RolledBackError) Unwrap() error { return e.Cause }

// transferImages picks each service's image for the host's platform and
// tags it with the configured tag and the release's own.
func (d *Deployer) transferImages(built []imagebuild.Built, platform, id string) ([]TransferImage, error) {
	var out []TransferImage
	for _, b := range built {
		var img v1.Image
		for _, pi := range b.Images {
			if pi.Platform.String() == platform {
				img = pi.Image
			}
		}
		if img == nil {
			return nil, fmt.Errorf("%s: no image of %s for %s", d.cfg.Name, b.Ref, platform)
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

// imageIDs maps each service to its image ID (the config digest), as the
// release records them.
func imageIDs(images []TransferImage) (map[string]string, error) {
	m := map[string]string{}
	for _, ti := range images {
		d, err := ti.Image.ConfigName()
		if err != nil {
			return nil, fmt.Errorf("image ID of %s: %w", ti.Service, err)
		}
		m[ti.Service] = d.String()
	}
	return m, nil
}

// holdLock takes the host's deploy lock for this deploy or rollback and
// keeps it until release, which says so if renewing it ever failed. The
// deploy goes on with the returned context, which ends if the lock is
// lost to another deploy.
func (d *Deployer) holdLock(ctx context.Context) (held context.Context, release func(), err error) {
	held, release, _, err = d.holdLockConfirmed(ctx)
	return held, release, err
}

// holdLockConfirmed is holdLock that also returns host.holdLock's confirm.
func (d *Deployer) holdLockConfirmed(ctx context.Context) (held context.Context, release func(), confirm func(context.Context) error, err error) {
	d.emit(StepLock, EventStart, "")
	me := lockInfo{Host: localHost(), PID: os.Getpid(), User: localUser()}
	held, unlock, confirm, err := d.h.holdLock(ctx, me, d.cfg.LockWait, d.cfg.LockTTL, d.cfg.Now, func(m string) { d.emit(StepLock, EventInfo, m) })
	if err != nil {
		d.emit(StepLock, EventFail, err.Error())
		return nil, nil, nil, err
	}
	d.emit(StepLock, EventOK, d.h.lockPath())
	return held, func() {
		if err := unlock(); err != nil {
			d.emit(StepLock, EventWarn, err.Error())
		}
	}, confirm, nil
}

// lockLost puts a step's failure in words when it came of losing the
// lock: a context that ended for that reason says so, not "canceled".
func lockLost(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errLockTaken) {
		return fmt.Errorf("%w; this deploy stopped (%w)", errLockTaken, err)
	}
	return err
}

// dryRunPlan says what a deploy would change, without changing anything.
func (d *Deployer) dryRunPlan(ctx context.Context, b Bundle, prev *Release, plan *TransferPlan, ids map[string]string) (*Plan, error) {
	p := &Plan{Layers: len(plan.Send), Bytes: plan.SendBytes}
	type file struct {
		rel string
		new []byte
		pin bool // written with the images pinned to the release
	}
	files := []file{{deployfiles.ComposePath, b.Compose, true}}
	for _, p := range slices.Sorted(maps.Keys(b.EnvFiles)) {
		files = append(files, file{p, b.EnvFiles[p], false})
	}
	if b.Routes != nil {
		files = append(files, file{deployfiles.RoutesPath, b.Routes, false})
	}
	for _, f := range files {
		if prev == nil {
			p.Files = append(p.Files, f.rel)
			continue
		}
		old, err := d.h.ssh.Run(ctx, "cat "+sshx.Quote(d.h.releaseDir(prev.ID)+"/"+f.rel), nil)
		var ee *sshx.ExitError
		switch {
		case errors.As(err, &ee):
			old = nil // not in the previous release: it changes
		case err != nil:
			return nil, fmt.Errorf("read %s of release %s: %w", f.rel, prev.ID, err)
		}
		cur := f.new
		if f.pin {
			if cur, err = pinImages(f.new, d.cfg.ImageName, d.cfg.Tag, prev.ID); err != nil {
				return nil, err
			}
		}
		if string(old) != string(cur) {
			p.Files = append(p.Files, f.rel)
		}
	}
	// The private files, by their sums: the deploy user cannot read the
	// previous release's own.
	for _, pf := range []struct {
		dir   privateDir
		files map[string][]byte
	}{{tlsDir, b.TLS}, {seedDir, b.MeshCASeed}} {
		var prevSums string
		if prev != nil && len(pf.files) > 0 {
			out, err := d.h.ssh.Run(ctx, "cat "+sshx.Quote(d.h.releaseDir(prev.ID)+"/"+pf.dir.sums), nil)
			var ee *sshx.ExitError
			if err != nil && !errors.As(err, &ee) {
				return nil, fmt.Errorf("read %s of release %s: %w", pf.dir.sums, prev.ID, err)
			}
			prevSums = string(out)
		}
		for _, n := range pf.dir.ordered(pf.files) {
			if !strings.Contains(prevSums, string(pf.dir.sumsOf(map[string][]byte{n: pf.files[n]}))) {
				p.Files = append(p.Files, pf.dir.dir+"/"+n)
			}
		}
	}
	for _, s := range catalog.Services {
		if prev == nil || prev.Images[s.Name] != ids[s.Name] {
			p.Services = append(p.Services, s.Name)
		}
	}
	return p, nil
}

// prune removes releases beyond the newest KeepReleases, with their tags,
// but never the current one nor the one a rollback returns to.
// What it cannot remove stays, and is said.
func (d *Deployer) prune(ctx context.Context) {
	h := d.h
	rs, err := h.releases(ctx)
	if err != nil {
		d.emit(StepPrune, EventWarn, "old releases left: "+err.Error())
		return
	}
	if len(rs) <= d.cfg.KeepReleases {
		return
	}
	list, err := h.projectContainers(ctx)
	if err != nil {
		d.emit(StepPrune, EventWarn, "old releases left: "+err.Error())
		return
	}
	kept := h.alwaysKept(rs, list) // as Prune keeps them
	for _, r := range rs[d.cfg.KeepReleases:] {
		if kept(r) {
			continue
		}
		for _, s := range catalog.Services {
			// An image tag another release still uses is kept by Docker.
			if _, err := h.run(ctx, "docker rmi "+sshx.Quote(releaseTag(deployfiles.Image(d.cfg.ImageName, d.cfg.Tag, s), r.ID))+" >/dev/null 2>&1; true"); err != nil {
				d.emit(StepPrune, EventWarn, fmt.Sprintf("release %s: remove its image of %s: %v", r.ID, s.Name, err))
			}
		}
		if _, err := h.run(ctx, "rm -rf "+sshx.Quote(h.releaseDir(r.ID))); err != nil {
			d.emit(StepPrune, EventWarn, fmt.Sprintf("release %s left: %v", r.ID, err))
			continue
		}
		d.emit(StepPrune, EventInfo, "removed release "+r.ID)
	}
}

// nextReleaseID names a new release at now, or a second after the newest
// of rs if that is later (a clock behind another's, two deploys in one
// second).
func nextReleaseID(now time.Time, version string, rs []Release) string {
	at := now.UTC().Truncate(time.Second)
	for _, r := range rs {
		if t, err := time.Parse(releaseIDTime, r.ID[:min(len(r.ID), len(releaseIDTime))]); err == nil && !t.Before(at) {
			at = t.Add(time.Second)
		}
	}
	return releaseID(at, version)
}

// releaseIDTime is the layout of a release id's time.
const releaseIDTime = "20060102T150405Z"

// releaseID names a release by time (sortable) and version.
func releaseID(t time.Time, version string) string {
	id := t.UTC().Format(releaseIDTime)
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

// Releases lists the target's releases, newest first.
func (d *Deployer) Releases(ctx context.Context) ([]Release, error) {
	return d.h.releases(ctx)
}

// RollbackResult is what a rollback did.
type RollbackResult struct {
	// Target is the target's name.
	Target string `json:"target"`
	// Release is the release that is live now.
	Release string `json:"release"`
	// Replaced is the release that was current before, if any.
	Replaced string `json:"replaced,omitempty"`
	// AuditError says the rollback, which succeeded, is missing from the
	// host's audit log.
	AuditError string `json:"audit_error,omitempty"`
}

// Rollback brings release id back (by default the newest release older
// than the current one that went live) through the same activation as a
// deploy: compose up, the health gate, current, the records. As a deploy,
// it refuses, with a *SecretChangeError, a release whose data-bound
// secrets are not the current release's, unless rotate names them.
func (d *Deployer) Rollback(ctx context.Context, id string, rotate []string) (res *RollbackResult, rollbackErr error) {
	name := d.cfg.Name
	if _, err := d.preflight(ctx, nil, false); err != nil {
		return nil, err
	}
	entry := AuditEntry{Action: AuditRollback, Release: id}
	if id != "" {
		entry.Args = []string{id}
	}
	defer func() {
		if res != nil {
			entry.Release = res.Release
		}
		rollbackErr = d.auditOutcome(ctx, entry, rollbackErr, func(msg string) { res.AuditError = msg })
	}()
	held, release, confirmLock, err := d.holdLockConfirmed(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx = held
	defer func() { rollbackErr = lockLost(held, rollbackErr) }()

	// Chosen under the lock: a deploy finishing meanwhile changes the
	// answer.
	rs, err := d.h.releases(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", name, err)
	}
	target, cur := pickRollback(rs, id)
	var cut []*Release
	if id == "" && cur != nil {
		if cut = interruptedDeploys(rs); len(cut) > 0 {
			// A deploy cut off after its compose up (the connection
			// lost, the laptop gone) may have left its release's
			// containers running in place of the current one's: what
			// to bring back is the current release, not the one before.
			target = cur
			d.emit(StepRollback, EventInfo, fmt.Sprintf("release %s was left %s by a deploy that was cut off, and its containers may be running: bringing back the current release %s (roll back again to go further back)",
				cut[0].ID, ReleaseDeploying, cur.ID))
		}
	}
	if target == nil {
		if id == "" {
			return nil, fmt.Errorf("%s: %w: no earlier release that went live", name, ErrNoRelease)
		}
		return nil, fmt.Errorf("%s: %w %q", name, ErrNoRelease, id)
	}
	entry.Release = target.ID
	out := &RollbackResult{Target: name, Release: target.ID}
	if len(cut) > 0 {
		out.Replaced = cut[0].ID
	} else if cur != nil {
		out.Replaced = cur.ID
	}
	if cur != nil {
		// The host's data and its users' tokens are bound to the
		// secrets it runs with now, as for a deploy: a release from
		// before a rotation would bring back a key the data chain's
		// newer records do not open, or void every token issued since.
		files, err := d.h.releaseEnvFiles(ctx, target.ID)
		if err != nil {
			return nil, err
		}
		if _, err := d.checkSecretsStep(ctx, files, rotate); err != nil {
			var sc *SecretChangeError
			if errors.As(err, &sc) {
				sc.Rollback = target.ID
			}
			return nil, err
		}
	}
	if d.cfg.BeforeUp != nil {
		if err := d.cfg.BeforeUp(ctx); err != nil {
			return nil, err
		}
	}
	d.emit(StepRollback, EventStart, target.ID)
	if live, err := d.activate(ctx, target, cur, nil, true); err != nil {
		d.emit(StepRollback, EventFail, err.Error())
		switch {
		case live:
			return nil, fmt.Errorf("%s: release %s serves, but: %w", name, target.ID, err)
		case cur == nil || cur.ID == target.ID:
			return nil, fmt.Errorf("%s: rollback to %s: %w", name, target.ID, err)
		}
		// The target's containers replaced the current release's and do
		// not serve: the current release comes back, as after a failed
		// deploy. The target keeps its record: it went live once, and
		// what failed now may be passing (a slow start).
		return nil, d.returnTo(ctx, target, cur, fmt.Errorf("rollback to %s: %w", target.ID, err), confirmLock, false)
	}
	// The cut deploys' releases never passed their gate: recorded so,
	// the next rollback goes back past the current release.
	var recErrs []error
	for _, r := range cut {
		if err := d.h.record(ctx, r, ReleaseFailed); err != nil {
			recErrs = append(recErrs, err)
		}
	}
	if err := errors.Join(recErrs...); err != nil {
		d.emit(StepRollback, EventFail, err.Error())
		return nil, fmt.Errorf("%s: release %s serves, but: %w", name, target.ID, err)
	}
	d.emit(StepRollback, EventOK, "release "+target.ID+" is live")
	return out, nil
}

// interruptedDeploys are the releases in rs (newest first) newer than the
// current one and still recorded deploying: a deploy records its release
// live or failed whenever it can reach the host to do so, so these are
// mostly of deploys cut off (the connection lost, lucidctl killed) after
// writing them, possibly after their compose up. (The others: a release
// that passed its gate but could not be made current, and one left as it
// was because another deploy took the lock. For a rollback, which goes
// back from whatever serves, the current release is the one to bring
// back in each case.)
func interruptedDeploys(rs []Release) []*Release {
	var out []*Release
	for i := range rs {
		if rs[i].Current {
			return out
		}
		if rs[i].Status == ReleaseDeploying {
			out = append(out, &rs[i])
		}
	}
	return nil // no current release: nothing is newer than it
}

// pickRollback finds the release a rollback goes to in rs (newest first):
// id, or without one the newest release older than the current one that
// went live. cur is the current release, if any.
func pickRollback(rs []Release, id string) (target, cur *Release) {
	for i := range rs {
		r := &rs[i]
		if r.Current {
			cur = r
		}
		switch {
		case id != "":
			if r.ID == id {
				target = r
			}
		case cur != nil && r != cur && target == nil && r.Status.WentLive():
			target = r
		}
	}
	return target, cur
}
