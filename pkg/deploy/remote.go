package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pickme/lucid/pkg/sshx"
)

// host is one target over one SSH connection: commands, files, and its
// Docker Engine through the forwarded socket.
type host struct {
	name   string
	ssh    *sshx.Client
	docker *client.Client
	dir    string
	// compose is the compose command line the host has.
	compose string
	// held is the lock this deploy holds (a zero Nonce: none).
	held lockInfo
}

func newHost(name string, ssh *sshx.Client, dir, socket string) (*host, error) {
	dc, err := client.NewClientWithOpts(
		client.WithHost("http://docker"),
		client.WithHTTPClient(&http.Client{Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) { return ssh.DialUnix(socket) },
		}}),
		client.WithAPIVersionNegotiation(),
	)
	if err != nil {
		return nil, err
	}
	return &host{name: name, ssh: ssh, docker: dc, dir: dir}, nil
}

func (h *host) run(ctx context.Context, cmd string) (string, error) {
	out, err := h.ssh.Run(ctx, cmd, nil)
	return strings.TrimSpace(string(out)), err
}

// Preflight failures, for callers and tests to tell apart.
var (
	ErrNoDocker     = errors.New("docker is not reachable on the host")
	ErrNoCompose    = errors.New("neither `docker compose` nor `docker-compose` is on the host")
	ErrArchitecture = errors.New("the host's architecture does not match the images")
	ErrDiskFull     = errors.New("not enough free disk on the host")
	ErrClockSkew    = errors.New("the host's clock is too far off")
	// ErrNoFlock: flock(1) guards every step of the deploy lock.
	ErrNoFlock = errors.New("flock (util-linux) is not on the host; the deploy lock needs it")
)

// Preflight is what a host offers, checked before anything changes.
type Preflight struct {
	Docker    string `json:"docker"`
	Compose   string `json:"compose"`
	Platform  string `json:"platform"`
	FreeBytes int64  `json:"free_bytes"`
	ClockSkew string `json:"clock_skew"`
	Network   string `json:"network"`
}

// preflight checks the host: Docker, compose, architecture (a 32-bit
// userland on a 64-bit kernel counts as 32-bit), free disk, clock, and the
// external network (created when missing, unless dry).
func (h *host) preflight(ctx context.Context, o Options, platforms []v1.Platform, dry bool) (*Preflight, error) {
	pf := &Preflight{}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ver, err := h.docker.ServerVersion(pctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %v", h.name, ErrNoDocker, err)
	}
	pf.Docker = ver.Version

	if v, err := h.run(ctx, "docker compose version --short"); err == nil && v != "" {
		h.compose, pf.Compose = "docker compose", "docker compose "+v
	} else if v, err := h.run(ctx, "docker-compose version --short"); err == nil && v != "" {
		h.compose, pf.Compose = "docker-compose", "docker-compose "+v
	} else {
		return nil, fmt.Errorf("%s: %w", h.name, ErrNoCompose)
	}

	// Every step of the deploy lock runs under flock.
	if _, err := h.run(ctx, "command -v flock"); err != nil {
		var ee *sshx.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("%s: %w", h.name, ErrNoFlock)
		}
		return nil, fmt.Errorf("%s: look for flock: %w", h.name, err)
	}

	machine, err := h.run(ctx, "uname -m; getconf LONG_BIT")
	if err != nil {
		return nil, fmt.Errorf("%s: architecture: %w", h.name, err)
	}
	pf.Platform = platformOf(machine)
	match := len(platforms) == 0 // nothing to send (a rollback)
	for _, p := range platforms {
		if p.String() == pf.Platform {
			match = true
		}
	}
	if !match {
		var built []string
		for _, p := range platforms {
			built = append(built, p.String())
		}
		return nil, fmt.Errorf("%s: %w: the host is %s, the images are %s", h.name, ErrArchitecture, pf.Platform, strings.Join(built, ", "))
	}

	// The free space where releases will go; a dry run creates nothing,
	// so it asks about the nearest directory that exists.
	space := "mkdir -p " + sshx.Quote(h.dir) + " && df -Pk " + sshx.Quote(h.dir)
	if dry {
		space = "d=" + sshx.Quote(h.dir) + `; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d"`
	}
	df, err := h.run(ctx, space)
	if err != nil {
		return nil, fmt.Errorf("%s: deploy directory %s: %w", h.name, h.dir, err)
	}
	lines := strings.Split(df, "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 4 {
		return nil, fmt.Errorf("%s: free disk: cannot read df's answer %q", h.name, df)
	}
	kb, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s: free disk: cannot read df's answer %q", h.name, df)
	}
	pf.FreeBytes = kb * 1024
	if pf.FreeBytes < o.MinFreeBytes {
		return nil, fmt.Errorf("%s: %w: %d MiB free under %s, %d MiB needed", h.name, ErrDiskFull, pf.FreeBytes>>20, h.dir, o.MinFreeBytes>>20)
	}

	before, start := o.Now(), time.Now()
	secs, err := h.run(ctx, "date +%s")
	if err != nil {
		return nil, fmt.Errorf("%s: clock: %w", h.name, err)
	}
	remote, _ := strconv.ParseInt(secs, 10, 64)
	skew := time.Unix(remote, 0).Sub(before.Add(time.Since(start) / 2)).Round(time.Second)
	pf.ClockSkew = skew.String()
	if skew > o.MaxClockSkew || -skew > o.MaxClockSkew {
		return nil, fmt.Errorf("%s: %w: %s (tokens and mesh certificates need clocks within %s)", h.name, ErrClockSkew, skew, o.MaxClockSkew)
	}

	if _, err := h.docker.NetworkInspect(ctx, o.Network, network.InspectOptions{}); err == nil {
		pf.Network = o.Network + " (exists)"
	} else if dry {
		pf.Network = o.Network + " (would be created)"
	} else if _, err := h.docker.NetworkCreate(ctx, o.Network, network.CreateOptions{Driver: "bridge"}); err != nil {
		return nil, fmt.Errorf("%s: create network %s: %w", h.name, o.Network, err)
	} else {
		pf.Network = o.Network + " (created)"
	}
	return pf, nil
}

// platformOf maps `uname -m` and `getconf LONG_BIT` to an image platform.
func platformOf(out string) string {
	lines := strings.Fields(out)
	if len(lines) == 0 {
		return "unknown"
	}
	machine, bits := lines[0], ""
	if len(lines) > 1 {
		bits = lines[1]
	}
	switch machine {
	case "x86_64", "amd64":
		if bits == "32" {
			return "linux/386"
		}
		return "linux/amd64"
	case "aarch64", "arm64":
		if bits == "32" {
			return "linux/arm/v7" // a 32-bit userland on a 64-bit kernel
		}
		return "linux/arm64"
	case "armv7l", "armv8l":
		return "linux/arm/v7"
	case "armv6l":
		return "linux/arm/v6"
	}
	return "linux/" + machine
}

// lockInfo is the content of the deploy lock on the host.
type lockInfo struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	User    string    `json:"user"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
	// Nonce makes each lock's content unique, so a deploy removes only its
	// own lock, and two deploys taking over one stale lock cannot both win.
	Nonce string `json:"nonce"`
}

// ErrLocked means another deploy holds the host.
var ErrLocked = errors.New("another deploy holds the lock")

func (h *host) lockPath() string { return path.Join(h.dir, ".deploy.lock") }

// lock takes the host's deploy lock, waiting up to wait for a live one
// and taking over an expired one. The lock is created with noclobber, so
// two deploys cannot both get it.
func (h *host) lock(ctx context.Context, me lockInfo, wait time.Duration, notify func(string)) error {
	if me.Nonce == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		me.Nonce = hex.EncodeToString(b[:])
	}
	data, _ := json.Marshal(me)
	deadline := time.Now().Add(wait)
	for {
		cmd := fmt.Sprintf("mkdir -p %s && set -C && printf '%%s\\n' %s > %s", sshx.Quote(h.dir), sshx.Quote(string(data)), sshx.Quote(h.lockPath()))
		_, err := h.run(ctx, cmd)
		if err == nil {
			h.held = me
			return nil
		}
		raw, rerr := h.run(ctx, "cat "+sshx.Quote(h.lockPath()))
		var held lockInfo
		if rerr != nil || json.Unmarshal([]byte(raw), &held) != nil {
			return fmt.Errorf("%s: deploy lock %s: %w", h.name, h.lockPath(), err)
		}
		if time.Now().After(held.Expires) {
			notify(fmt.Sprintf("taking over a stale lock of %s@%s (pid %d, expired %s)", held.User, held.Host, held.PID, held.Expires.Format(time.RFC3339)))
			// Only if it is still that stale lock: another deploy may have
			// taken it over a moment ago.
			if err := h.removeLockIf(ctx, raw); err != nil {
				return err
			}
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w: %s@%s, pid %d, since %s (expires %s)",
				h.name, ErrLocked, held.User, held.Host, held.PID, held.Since.Format(time.RFC3339), held.Expires.Format(time.RFC3339))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// holdLock takes the lock as me, for ttl from now, and keeps it for as
// long as the deploy runs: every ttl/3 the expiry moves to ttl from now,
// so a deploy slower than ttl (a slow link, a long health gate) is not
// taken over halfway, while a crashed one's lock still expires. release
// stops the renewal, removes the lock and returns the first renewal
// failure, if any.
func (h *host) holdLock(ctx context.Context, me lockInfo, wait, ttl time.Duration, now func() time.Time, notify func(string)) (release func() error, err error) {
	me.Since, me.Expires = now().UTC(), now().Add(ttl).UTC()
	if err := h.lock(ctx, me, wait, notify); err != nil {
		return nil, err
	}
	// Renewed until release, even past an interrupt: a rollback may still
	// be running under the lock.
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	var renewErr error
	go func() {
		defer close(done)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				cctx, cancel := context.WithTimeout(rctx, ttl/3)
				if err := h.renewLock(cctx, now().Add(ttl)); err != nil && renewErr == nil {
					renewErr = err
				}
				cancel()
			}
		}
	}()
	return func() error {
		stop()
		<-done // the renewal no longer touches h.held
		h.unlock(ctx)
		return renewErr
	}, nil
}

// errLockTaken reports that the lock stopped being this deploy's.
var errLockTaken = errors.New("another deploy took the deploy lock over while this one ran")

// renewLock moves the lock's expiry to until, if the lock is still this
// deploy's; the new content replaces the old in one rename. The lock is
// known by its nonce, which a renewal keeps, so a renewal that renamed but
// did not hear back leaves a lock that is still recognised.
func (h *host) renewLock(ctx context.Context, until time.Time) error {
	me := h.held
	me.Expires = until.UTC()
	data, _ := json.Marshal(me)
	lp, tmp := sshx.Quote(h.lockPath()), sshx.Quote(h.lockPath()+".renew")
	out, err := h.run(ctx, fmt.Sprintf(`%s && printf '%%s\n' %s > %s && mv -f %s %s && echo renewed; true`, h.ownsLock(), sshx.Quote(string(data)), tmp, tmp, lp))
	if err != nil {
		// The cause, not the shell line.
		if cause := errors.Unwrap(err); cause != nil {
			err = cause
		}
		return fmt.Errorf("the deploy lock could not be renewed (%w); another deploy may have run meanwhile", err)
	}
	if out != "renewed" {
		return errLockTaken
	}
	h.held = me
	return nil
}

// ownsLock is a shell test that the lock file is this deploy's.
func (h *host) ownsLock() string {
	return fmt.Sprintf("grep -qF %s %s", sshx.Quote(`"nonce":"`+h.held.Nonce+`"`), sshx.Quote(h.lockPath()))
}

// unlock removes the lock if it is still ours.
func (h *host) unlock(ctx context.Context) {
	if h.held.Nonce != "" {
		_, _ = h.run(context.WithoutCancel(ctx), fmt.Sprintf("%s && rm -f %s; true", h.ownsLock(), sshx.Quote(h.lockPath())))
	}
}

// removeLockIf removes the lock file when its content is content.
func (h *host) removeLockIf(ctx context.Context, content string) error {
	lp := sshx.Quote(h.lockPath())
	_, err := h.run(ctx, fmt.Sprintf(`[ "$(cat %s 2>/dev/null)" = %s ] && rm -f %s; true`, lp, sshx.Quote(strings.TrimSpace(content)), lp))
	return err
}
