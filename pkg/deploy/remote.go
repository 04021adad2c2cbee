package deploy

import (
	"cmp"
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
	"sync"
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
	// project is the compose project of the target's releases.
	project string
	// compose is the compose command line the host has.
	compose string
	// held is the lock this deploy holds (a zero Nonce: none).
	held lockInfo
	// stepGate, set only by tests, is a shell command the host runs before
	// each lock step takes its guard, so that a test can start two
	// deploys' steps at the same instant.
	stepGate string
	// dockerWait is how long past the health gate's own timeout the gate
	// waits for the host's Docker Engine to answer, and how long a look
	// at the containers after a failed compose up may take (zero:
	// dockerAnswerWait); upGrace how long compose up may take beyond the
	// health timeout (zero: composeUpGrace). Tests shorten them.
	dockerWait, upGrace time.Duration
	// stepTimeout bounds a lock step (zero: lockStepTimeout). Tests
	// shorten it.
	stepTimeout time.Duration
}

// dockerAnswer is h.dockerWait or its default.
func (h *host) dockerAnswer() time.Duration { return cmp.Or(h.dockerWait, dockerAnswerWait) }

// upLimit is how long compose up may take with the health gate's
// timeout healthTimeout.
func (h *host) upLimit(healthTimeout time.Duration) time.Duration {
	return healthTimeout + cmp.Or(h.upGrace, composeUpGrace)
}

func newHost(name string, ssh *sshx.Client, dir, socket, project string) (*host, error) {
	dc, err := newDockerClient(func() (net.Conn, error) { return ssh.DialUnix(socket) }, dockerCallWait)
	if err != nil {
		return nil, err
	}
	return &host{name: name, ssh: ssh, docker: dc, dir: dir, project: project}, nil
}

// dockerCallWait bounds how long any call to a host's Docker Engine waits
// for its answer to begin. The slowest call that answers only when done
// is a restart: the container's stop timeout (Docker's 10 s, as the
// compose file sets none), then its start; an image's removal from a slow
// SD card takes seconds. Streams (logs, events, a pull's progress) begin
// their answer at once. An Engine that stopped answering (a failing SD
// card, with sshd still up) would otherwise hold a command, and the
// deploy lock, for ever.
const dockerCallWait = 2 * time.Minute

// newDockerClient is a Docker client over dial whose every call fails
// once the Engine has not begun to answer it within wait. The transport
// stays an *http.Transport, which the client closes idle connections of.
func newDockerClient(dial func() (net.Conn, error), wait time.Duration) (*client.Client, error) {
	return client.NewClientWithOpts(
		client.WithHost("http://docker"),
		client.WithHTTPClient(&http.Client{Transport: &http.Transport{
			DialContext:           func(context.Context, string, string) (net.Conn, error) { return dial() },
			ResponseHeaderTimeout: wait,
		}}),
		client.WithAPIVersionNegotiation(),
	)
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

// preflight checks the host before anything changes, reporting the step.
// platforms are the images' (none for a rollback, which sends none).
func (d *Deployer) preflight(ctx context.Context, platforms []v1.Platform, dry bool) (*Preflight, error) {
	d.emit(StepPreflight, EventStart, "")
	pf, err := d.h.preflight(ctx, d.cfg, platforms, dry)
	if err != nil {
		d.emit(StepPreflight, EventFail, err.Error())
		return nil, err
	}
	d.emit(StepPreflight, EventOK, fmt.Sprintf("docker %s, %s, %s, %d MiB free, clock %s, network %s", pf.Docker, pf.Compose, pf.Platform, pf.FreeBytes>>20, pf.ClockSkew, pf.Network))
	return pf, nil
}

// preflight checks the host: Docker, compose, architecture (a 32-bit
// userland on a 64-bit kernel counts as 32-bit), free disk, clock, and the
// external network (created when missing, unless dry).
func (h *host) preflight(ctx context.Context, o Config, platforms []v1.Platform, dry bool) (*Preflight, error) {
	pf := &Preflight{}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ver, err := h.docker.ServerVersion(pctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", h.name, ErrNoDocker, err)
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
	remote, err := strconv.ParseInt(secs, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s: clock: `date +%%s` answered %q", h.name, secs)
	}
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
	// TTL is how long, in seconds, the lock lives after it was last
	// written (taken or renewed), by the host's clock: whether it has
	// expired is judged by the host, whose clock is the same for every
	// deploy, not by a laptop's, which may be minutes off. Expires,
	// written by the holder's clock, is what a lock without TTL (of an
	// earlier lucidctl) is judged by, and what messages show.
	TTL int64 `json:"ttl_seconds,omitempty"`
	// Nonce makes each lock's content unique, so a deploy removes or
	// renews only its own lock, and a takeover replaces only the very
	// lock it saw expire.
	Nonce string `json:"nonce"`
}

// ErrLocked means another deploy holds the host.
var ErrLocked = errors.New("another deploy holds the lock")

func (h *host) lockPath() string { return path.Join(h.dir, ".deploy.lock") }

// The deploy lock's steps (take, take over, renew, release) each read the
// lock file, decide, and write it. Each runs as one script on the host
// under flock(1) on the deploy directory, so to every other deploy a step
// is a single event: two deploys' steps never interleave. The flock lasts
// only for the step (a few file operations), never for the deploy; the
// kernel drops it when its holder exits, so a deploy cut off mid-step
// leaves no guard behind. The lock file itself is only ever replaced by
// rename, so it always holds a whole lockInfo.
const (
	// guardBusy is flock's exit status when the guard stays taken.
	guardBusy = 75
	// guardWait bounds the wait for the guard: a step holds it for
	// milliseconds, so a longer wait means a host in trouble.
	guardWait = 20 * time.Second
	// lockStepTimeout bounds a whole lock step: the guard's wait, and the
	// step's writes and sync, which a card that stopped answering would
	// hold up for ever. Releasing the lock and confirming it on the way
	// back run whatever happens to the deploy's context (an interrupt is
	// ignored there), so only this ends them on a hung host; the lock
	// then expires by itself.
	lockStepTimeout = guardWait + 40*time.Second
)

// The steps' scripts; "$1" is the lock file, "$2" a temporary file beside
// it (free to use under the guard).
const (
	// acquireScript creates the lock as "$3", or, when "$5" is
	// "takeover", replaces it when its content is exactly "$4" (the lock
	// seen expired: a renewal or another takeover since then changed the
	// content; an empty file has empty content). It
	// answers "taken", or "held", the seconds since the lock was last
	// written by the host's clock ("-" if stat cannot say) and the lock's
	// content. A lock is flushed to disk before its rename: a power cut
	// just after must not leave an empty lock file.
	acquireScript = `if [ -e "$1" ]; then
	cur=$(cat "$1") || exit
	if [ "$5" != takeover ] || [ "$cur" != "$4" ]; then
		age=-
		m=$(stat -c %Y -- "$1" 2>/dev/null) && age=$(( $(date +%s) - m ))
		printf 'held\n%s\n%s\n' "$age" "$cur"; exit 0
	fi
fi
printf '%s\n' "$3" > "$2" && ` + syncTemp + ` && mv -f "$2" "$1" && echo taken`

	// syncTemp flushes the temporary file "$2": sync with a file flushes
	// that file (coreutils), one without (busybox) everything.
	syncTemp = `{ sync "$2" 2>/dev/null || sync; }`

	// ownsScript answers "lost" and stops unless the lock names nonce "$3".
	ownsScript = `if [ -e "$1" ]; then grep -qF -e "$3" -- "$1"; else false; fi
case $? in 0) ;; 1) echo lost; exit 0 ;; *) exit 2 ;; esac
`
	// renewScript replaces our lock with "$4" (the same nonce, a later
	// expiry).
	renewScript = ownsScript + `printf '%s\n' "$4" > "$2" && ` + syncTemp + ` && mv -f "$2" "$1" && echo renewed`

	// releaseScript removes our lock, and a temporary file a step cut
	// off may have left.
	releaseScript = ownsScript + `rm -f -- "$1" "$2" && echo released`
)

// lockStep runs one of the scripts above under the guard, with args after
// the lock file and its temporary file, and returns its answer.
func (h *host) lockStep(ctx context.Context, script string, args ...string) (string, error) {
	dir := sshx.Quote(h.dir)
	// mkdir first: flock creates a missing file, not a directory.
	// The mark comes first: whatever the user's shell start-up files print
	// on the host comes before it and is not the step's answer.
	cmd := fmt.Sprintf("echo %s && mkdir -p %s && flock -w %d -E %d %s sh -c %s lucid-lock %s %s",
		stepMark, dir, int(guardWait/time.Second), guardBusy, dir, sshx.Quote(script), sshx.Quote(h.lockPath()), sshx.Quote(h.lockPath()+".new"))
	for _, a := range args {
		cmd += " " + sshx.Quote(a)
	}
	if h.stepGate != "" {
		cmd = h.stepGate + " && " + cmd
	}
	limit := h.stepTimeout
	if limit <= 0 {
		limit = lockStepTimeout
	}
	sctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	out, err := h.ssh.Run(sctx, cmd, nil)
	var ee *sshx.ExitError
	switch {
	case err != nil && ctx.Err() == nil && sctx.Err() != nil:
		return "", fmt.Errorf("the lock step on the host did not end within %s: is its disk answering?", limit)
	case errors.As(err, &ee) && ee.Code == guardBusy:
		return "", fmt.Errorf("the lock's guard (flock on %s) stayed taken for over %s; is a lucidctl step stuck on the host?", h.dir, guardWait)
	case errors.As(err, &ee) && ee.Code == 127 && strings.Contains(ee.Stderr, "flock"):
		return "", ErrNoFlock
	case errors.As(err, &ee):
		// The host's words, not the script.
		words := strings.TrimSpace(ee.Stderr)
		if words == "" {
			words = "the host said nothing more"
		}
		return "", fmt.Errorf("the lock step on the host failed (exit status %d): %s", ee.Code, words)
	case err != nil:
		if cause := errors.Unwrap(err); cause != nil {
			err = cause // the cause, not the shell line
		}
		return "", err
	}
	_, answer, ok := strings.Cut(string(out), stepMark+"\n")
	if !ok {
		return "", fmt.Errorf("the lock step on the host gave no answer: %q", out)
	}
	return answer, nil
}

// stepMark precedes a lock step's answer in what the host prints.
const stepMark = "lucid-lock-step"

// lock takes the host's deploy lock, waiting up to wait for a live one
// and taking over an expired one.
func (h *host) lock(ctx context.Context, me lockInfo, wait time.Duration, notify func(string)) error {
	if me.Nonce == "" {
		var b [12]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand)
		me.Nonce = hex.EncodeToString(b[:])
	}
	data, err := json.Marshal(me)
	if err != nil {
		return fmt.Errorf("%s: deploy lock: %w", h.name, err)
	}
	deadline := time.Now().Add(wait)
	// The content of the expired lock to take over, when takeover.
	stale, takeover := "", ""
	for {
		out, err := h.lockStep(ctx, acquireScript, string(data), stale, takeover)
		if err != nil {
			return fmt.Errorf("%s: deploy lock %s: %w", h.name, h.lockPath(), err)
		}
		if out == "taken\n" {
			h.held = me
			ownLocks.Store(me.Nonce, true)
			return nil
		}
		rest, ok := strings.CutPrefix(out, "held\n")
		ageText, raw, ok2 := strings.Cut(rest, "\n")
		raw, ok3 := strings.CutSuffix(raw, "\n")
		var held lockInfo
		if !ok || !ok2 || !ok3 {
			return fmt.Errorf("%s: deploy lock %s: unexpected answer %q", h.name, h.lockPath(), out)
		}
		// Seconds since the lock was written, by the host's clock; an
		// error when the host's stat cannot say.
		age, ageErr := strconv.ParseInt(ageText, 10, 64)
		if ageErr == nil && age < 0 {
			// Written "in the future": the host's clock stepped back
			// since (a Pi without a battery clock, after a power cut).
			ageErr = fmt.Errorf("the lock file was written %ds from now by the host's clock", -age)
		}
		if err := json.Unmarshal([]byte(raw), &held); err != nil {
			if ageErr == nil && age > int64(unreadableLockAge/time.Second) {
				// Not a lock, and older than any lock lives unrenewed:
				// no deploy can be holding it.
				if takeover == "" || raw != stale {
					notify(fmt.Sprintf("taking over an unreadable lock file written %s ago", time.Duration(age)*time.Second))
				}
				stale, takeover = raw, "takeover"
				continue
			}
			return fmt.Errorf("%s: deploy lock %s holds %q, not a lock (%w); remove it if no deploy runs there", h.name, h.lockPath(), raw, err)
		}
		if lockExpired(held, age, ageErr) {
			// Replaced only if it is still this content, exactly as read:
			// a renewal or another takeover since then changes it.
			if takeover == "" || raw != stale {
				notify(fmt.Sprintf("taking over a stale lock of %s@%s (pid %d, expired %s)", held.User, held.Host, held.PID, held.Expires.Format(time.RFC3339)))
			}
			stale, takeover = raw, "takeover"
			continue
		}
		stale, takeover = "", ""
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w: %s@%s, pid %d, since %s (expires %s; the lock is %s)",
				h.name, ErrLocked, held.User, held.Host, held.PID, held.Since.Format(time.RFC3339), held.Expires.Format(time.RFC3339), h.lockPath())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// unreadableLockAge is how old a lock file that holds no lock must be
// before a deploy replaces it: longer than a lock lives without renewal
// by default.
const unreadableLockAge = time.Hour

// lockExpired reports whether held, last written age seconds ago by the
// host's clock (ageErr when the host could not say), has expired: by the
// host's clock when held says how long it lives, else by this machine's.
func lockExpired(held lockInfo, age int64, ageErr error) bool {
	if held.TTL > 0 && ageErr == nil {
		return age > held.TTL
	}
	return time.Now().After(held.Expires)
}

// holdLock takes the lock as me, for ttl from now, and keeps it for as
// long as the deploy runs: every ttl/3 the expiry moves to ttl from now,
// so a deploy slower than ttl (a slow link, a long health gate) is not
// taken over halfway, while a crashed one's lock still expires. The
// returned context is ctx, ended with errLockTaken as its cause if a
// renewal finds the lock is another deploy's now: the deploy must stop
// changing a host someone else is deploying to. release stops the
// renewal, removes the lock and returns the first renewal failure and the
// removal's, if any (a renewal that release itself cut short is none).
// confirm renews the lock at once, ending held as a renewal would if the
// lock is another deploy's: for a step that must not run on a host
// someone else holds, however recently the last renewal went through.
func (h *host) holdLock(ctx context.Context, me lockInfo, wait, ttl time.Duration, now func() time.Time, notify func(string)) (held context.Context, release func() error, confirm func(context.Context) error, err error) {
	me.Since, me.Expires = now().UTC(), now().Add(ttl).UTC()
	me.TTL = max(1, int64(ttl/time.Second))
	if err := h.lock(ctx, me, wait, notify); err != nil {
		return nil, nil, nil, err
	}
	held, lost := context.WithCancelCause(ctx)
	// Renewed until release, even past an interrupt: a rollback may still
	// be running under the lock.
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	var renewErr error
	var mu sync.Mutex // one renewal at a time: they read and write h.held
	renew := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		return h.renewLock(ctx, now().Add(ttl))
	}
	confirm = func(ctx context.Context) error {
		err := renew(ctx)
		if errors.Is(err, errLockTaken) {
			lost(errLockTaken)
		}
		return err
	}
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
				err := renew(cctx)
				cancel()
				switch {
				case rctx.Err() != nil:
					return // release is under way; it has the last word
				case errors.Is(err, errLockTaken):
					lost(errLockTaken)
					renewErr = err
					return
				case err != nil && renewErr == nil:
					renewErr = err
				}
			}
		}
	}()
	return held, func() error {
		stop()
		<-done // the renewal no longer touches h.held
		lost(nil)
		err := h.unlock(ctx)
		if errors.Is(renewErr, errLockTaken) && errors.Is(err, errLockTaken) {
			return renewErr // said once
		}
		return errors.Join(renewErr, err)
	}, confirm, nil
}

// errLockTaken reports that the lock stopped being this deploy's.
var errLockTaken = errors.New("another deploy took the deploy lock over while this one ran")

// renewLock moves the lock's expiry to until, if the lock is still this
// deploy's. The lock is known by its nonce, which a renewal keeps, so a
// renewal that was made but not heard back leaves a lock that is still
// recognised. Under the guard, a renewal and a takeover of the same
// expired lock are ordered: a takeover after the renewal finds content it
// did not see expire and leaves it; a renewal after the takeover finds
// another nonce and reports errLockTaken.
func (h *host) renewLock(ctx context.Context, until time.Time) error {
	me := h.held
	me.Expires = until.UTC()
	data, err := json.Marshal(me)
	if err != nil {
		return fmt.Errorf("the deploy lock could not be renewed: %w", err)
	}
	out, err := h.lockStep(ctx, renewScript, h.nonceMark(), string(data))
	switch {
	case err != nil:
		return fmt.Errorf("the deploy lock could not be renewed (%w); another deploy may have run meanwhile", err)
	case out == "lost\n":
		return errLockTaken
	case out != "renewed\n":
		return fmt.Errorf("the deploy lock could not be renewed: unexpected answer %q", out)
	}
	h.held = me
	return nil
}

// nonceMark is how the lock file names this deploy's nonce.
func (h *host) nonceMark() string { return `"nonce":"` + h.held.Nonce + `"` }

// unlock removes the lock if it is still ours; errLockTaken if it is not.
func (h *host) unlock(ctx context.Context) error {
	if h.held.Nonce == "" {
		return nil
	}
	out, err := h.lockStep(context.WithoutCancel(ctx), releaseScript, h.nonceMark())
	switch {
	case err != nil:
		return fmt.Errorf("the deploy lock %s could not be removed (%w); the next deploy waits for it to expire at %s",
			h.lockPath(), err, h.held.Expires.Format(time.RFC3339))
	case out == "lost\n":
		h.held = lockInfo{}
		return errLockTaken
	case out != "released\n":
		return fmt.Errorf("the deploy lock %s could not be removed: unexpected answer %q", h.lockPath(), out)
	}
	h.held = lockInfo{}
	return nil
}
