package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/sshx"
)

// lockFixture is a host with a deploy directory and no Docker: the lock
// needs only the shell.
func lockFixture(t *testing.T) (*fixture, string) {
	t.Helper()
	f := &fixture{sshd: testenv.StartSSHD(t, testenv.SSHDOptions{}), dir: filepath.Join(t.TempDir(), "production")}
	return f, filepath.Join(f.dir, ".deploy.lock")
}

// readLock is the lock file's content, and whether there is one.
func readLock(t *testing.T, file string) (lockInfo, bool) {
	t.Helper()
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return lockInfo{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var l lockInfo
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatalf("the lock file holds %q: %v", data, err)
	}
	return l, true
}

// plant writes l as the host's lock, as a deploy would have.
func plant(t *testing.T, file string, l lockInfo) {
	t.Helper()
	data, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, append(data, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}

// plantStale writes the lock of a deploy that died an hour ago.
func plantStale(t *testing.T, file string, round int) {
	t.Helper()
	long := time.Now().Add(-2 * time.Hour).UTC()
	plant(t, file, lockInfo{Host: "gone", PID: 7, User: "crashed", Since: long, Expires: long.Add(time.Hour), Nonce: fmt.Sprintf("stale%d", round)})
}

// gate lines up racing deploys' lock steps on the host, so that they
// reach the guard at the same instant rather than whenever their SSH
// sessions happen to start. A gated step waits on a FIFO of its own in
// dir; once as many steps wait as racers are still running, the test
// opens and closes every FIFO, letting them all go at once.
type gate struct {
	dir      string
	running  atomic.Int32 // racers whose attempt has not returned
	released map[string]bool
}

func newGate(t *testing.T) *gate {
	return &gate{dir: t.TempDir(), released: map[string]bool{}}
}

// cmd is the host's side, for host.stepGate.
func (g *gate) cmd() string {
	return fmt.Sprintf(`f=$(mktemp -u %s/step.XXXXXXXX) && mkfifo "$f" && { read -r _ < "$f"; rm -f "$f"; }`, sshx.Quote(g.dir))
}

// waiting lists the gated steps not let go yet.
func (g *gate) waiting(t *testing.T) []string {
	entries, err := os.ReadDir(g.dir)
	if err != nil {
		t.Fatal(err)
	}
	var w []string
	for _, e := range entries {
		if !g.released[e.Name()] {
			w = append(w, e.Name())
		}
	}
	return w
}

// letThrough lets the gated steps go, a wave at a time, until done.
func (g *gate) letThrough(t *testing.T, done <-chan struct{}) {
	t.Helper()
	for {
		var wave []string
		finished := false
		testenv.Eventually(t, 2*time.Minute, "the racing steps at the gate", func() bool {
			select {
			case <-done:
				finished = true
				return true
			default:
			}
			wave = g.waiting(t)
			return len(wave) > 0 && len(wave) >= int(g.running.Load())
		})
		if finished {
			return
		}
		// Each open returns once its step reads; the closes then end every
		// read within microseconds of each other.
		var fifos []*os.File
		for _, name := range wave {
			f, err := os.OpenFile(filepath.Join(g.dir, name), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fifos = append(fifos, f)
			g.released[name] = true
		}
		for _, f := range fifos {
			if err := f.Close(); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestLockRace: two deploys that find the same expired lock, or no lock,
// at the same moment never both get it. Each round starts both through
// holdLock, as a deploy does, each on its own SSH connection, released by
// one channel, and the gate lines up their steps on the host. Neither
// waits (LockWait 0), and the winner still holds the lock when both
// attempts are over, so the loser must have been refused with ErrLocked
// while the winner's lock was there.
func TestLockRace(t *testing.T) {
	t.Parallel() // each on its own sshd
	f, lockFile := lockFixture(t)
	ctx := context.Background()
	racers := [2]*host{
		{name: "pi", ssh: f.dial(t), dir: f.dir},
		{name: "pi", ssh: f.dial(t), dir: f.dir},
	}
	g := newGate(t)
	begun := time.Now()
	const rounds = 20
	for round := range rounds + 1 {
		stale := round < rounds // the last round: no lock at all
		if stale {
			plantStale(t, lockFile, round)
		}
		start, done := make(chan struct{}), make(chan struct{})
		var (
			wg       sync.WaitGroup
			releases [2]func() error
			errs     [2]error
			said     [2][]string
		)
		g.running.Store(int32(len(racers)))
		for i, h := range racers {
			h.stepGate = g.cmd()
			wg.Go(func() {
				defer g.running.Add(-1)
				<-start
				me := lockInfo{Host: fmt.Sprintf("racer%d", i), PID: i, User: "deployer"}
				_, releases[i], _, errs[i] = h.holdLock(ctx, me, 0, time.Hour, time.Now, func(m string) { said[i] = append(said[i], m) })
			})
		}
		go func() { wg.Wait(); close(done) }()
		close(start)
		g.letThrough(t, done)
		<-done
		for _, h := range racers {
			h.stepGate = ""
		}

		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Errorf("round %d (stale lock %v): both deploys hold the lock", round, stale)
			case err == nil:
				winner = i
			case !errors.Is(err, ErrLocked):
				t.Errorf("round %d: racer %d: %v, want ErrLocked", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d (stale lock %v): neither deploy got the lock: %v", round, stale, errs)
		}
		if took := len(said[winner]) == 1 && strings.Contains(said[winner][0], "taking over a stale lock of crashed@gone"); took != stale {
			t.Errorf("round %d (stale lock %v): the winner said %q", round, stale, said[winner])
		}
		if held, ok := readLock(t, lockFile); !ok || held.Nonce != racers[winner].held.Nonce {
			t.Errorf("round %d: the lock file is %+v (present %v), want the winner's (nonce %s)", round, held, ok, racers[winner].held.Nonce)
		}
		for i, release := range releases {
			if release != nil {
				if err := release(); err != nil {
					t.Errorf("round %d: release of racer %d: %v", round, i, err)
				}
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		if _, ok := readLock(t, lockFile); ok {
			t.Fatalf("round %d: the lock outlived its release", round)
		}
	}
	t.Logf("%d rounds in %s", rounds+1, time.Since(begun).Round(time.Millisecond))
}

// TestLockRenewalRacesATakeover: a deploy whose lock has just run out,
// still alive and renewing it, races another deploy taking that lock
// over. One of them wins, the other hears so, and the lock file is the
// winner's: never a renewed lock that someone else also took. The
// renewal is lined up with the takeover's replacing step (the one after
// its notice), where the two compete.
func TestLockRenewalRacesATakeover(t *testing.T) {
	t.Parallel() // each on its own sshd
	f, lockFile := lockFixture(t)
	ctx := context.Background()
	late := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	taker := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	g := newGate(t)
	wins := map[string]int{}
	for round := range 10 {
		past := time.Now().Add(-time.Minute).UTC()
		late.held = lockInfo{Host: "late", PID: 1, User: "slow", Since: past.Add(-time.Hour), Expires: past, Nonce: fmt.Sprintf("late%d", round)}
		plant(t, lockFile, late.held)
		taker.held = lockInfo{}
		start, noticed, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
		var (
			wg                sync.WaitGroup
			renewErr, takeErr error
		)
		g.running.Store(2)
		late.stepGate = g.cmd()
		wg.Go(func() {
			defer g.running.Add(-1)
			<-noticed
			renewErr = late.renewLock(ctx, time.Now().Add(time.Hour))
		})
		var once sync.Once
		wg.Go(func() {
			defer g.running.Add(-1)
			<-start
			now := time.Now()
			takeErr = taker.lock(ctx, lockInfo{Host: "taker", PID: 2, User: "next", Since: now, Expires: now.Add(time.Hour)}, 0, func(string) {
				// The next step replaces the stale lock: from here on,
				// through the gate with the renewal.
				once.Do(func() { taker.stepGate = g.cmd(); close(noticed) })
			})
			once.Do(func() { close(noticed) }) // no notice: the renewal still runs
		})
		go func() { wg.Wait(); close(done) }()
		close(start)
		g.letThrough(t, done)
		<-done
		late.stepGate, taker.stepGate = "", ""

		held, ok := readLock(t, lockFile)
		switch {
		case renewErr == nil && takeErr == nil:
			t.Fatalf("round %d: the lock was renewed and taken over: two holders; the file names %s", round, held.Host)
		case renewErr == nil:
			if !errors.Is(takeErr, ErrLocked) || !ok || held.Nonce != late.held.Nonce || !held.Expires.After(time.Now()) {
				t.Fatalf("round %d: renewed; the taker got %v and the file is %+v", round, takeErr, held)
			}
			wins["renewal"]++
		case takeErr == nil:
			if !errors.Is(renewErr, errLockTaken) || !ok || held.Nonce != taker.held.Nonce {
				t.Fatalf("round %d: taken over; the renewal got %v and the file is %+v", round, renewErr, held)
			}
			wins["takeover"]++
			// The late deploy's release leaves the new holder's lock.
			if err := late.unlock(ctx); !errors.Is(err, errLockTaken) {
				t.Fatalf("round %d: the late deploy's unlock: %v, want errLockTaken", round, err)
			}
			if again, _ := readLock(t, lockFile); again.Nonce != taker.held.Nonce {
				t.Fatalf("round %d: the late deploy's unlock removed the new holder's lock", round)
			}
		default:
			t.Fatalf("round %d: neither renewed (%v) nor took over (%v)", round, renewErr, takeErr)
		}
		if err := os.Remove(lockFile); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("winners: %v", wins)
}

// guardWaiters counts the processes blocked on the flock of dir (the
// "->" lines of /proc/locks for its inode).
func guardWaiters(t *testing.T, dir string) int {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	ino := fmt.Sprintf(":%d ", fi.Sys().(*syscall.Stat_t).Ino)
	n := 0
	for line := range strings.SplitSeq(string(locks), "\n") {
		if strings.Contains(line, "-> FLOCK") && strings.Contains(line, ino) {
			n++
		}
	}
	return n
}

// TestLockStepCutOff: a takeover that dies halfway, holding the guard
// with its new content half written (its connection cut, its shell
// killed), holds up the next deploy only while it lives. The kernel drops
// the guard with it, the lock it was replacing is still whole, and the
// next deploy takes that over.
func TestLockStepCutOff(t *testing.T) {
	t.Parallel() // each on its own sshd
	flockBin := testenv.Tool(t, "flock", "")
	if _, err := os.Stat("/proc/locks"); err != nil {
		t.Skip("no /proc/locks to see a deploy wait for the guard")
	}
	f, lockFile := lockFixture(t)
	plantStale(t, lockFile, 0)
	holder := exec.Command(flockBin, f.dir, "sh", "-c", `printf '{"host":"ha' > "$1.new" && echo holding && exec cat`, "cut", lockFile)
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := holder.StdinPipe() // cat waits on it: the step hangs
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close() }() // ends cat, if the test did not already
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill := func() {
		if !killed {
			killed = true
			_ = syscall.Kill(-holder.Process.Pid, syscall.SIGKILL)
			_ = holder.Wait()
		}
	}
	defer kill()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "holding\n" {
		t.Fatalf("the cut-off step: %q %v", line, err)
	}

	h := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	var said []string
	done := make(chan error, 1)
	go func() {
		now := time.Now()
		done <- h.lock(context.Background(), lockInfo{Host: "next", PID: 3, User: "me", Since: now, Expires: now.Add(time.Hour)}, 0, func(m string) { said = append(said, m) })
	}()
	testenv.Eventually(t, 15*time.Second, "the next deploy waiting for the guard", func() bool { return guardWaiters(t, f.dir) > 0 })
	select {
	case err := <-done:
		t.Fatalf("the lock was decided while the cut-off step held the guard: %v", err)
	default:
	}
	kill()
	if err := <-done; err != nil {
		t.Fatalf("after the cut-off step died: %v", err)
	}
	if len(said) != 1 || !strings.Contains(said[0], "taking over a stale lock of crashed@gone") {
		t.Errorf("notices %q", said)
	}
	if held, ok := readLock(t, lockFile); !ok || held.Nonce != h.held.Nonce {
		t.Errorf("the lock file is %+v (present %v), want the new deploy's", held, ok)
	}
	if err := h.unlock(context.Background()); err != nil {
		t.Error(err)
	}
}

// TestLockStepOnAHungHost: a lock step the host never ends (its card
// stopped answering mid-sync) ends at the step's bound, even where it
// runs whatever happens to the deploy's context (the release, the
// confirmation on the way back), saying what to suspect; the lock is
// left to expire, and a host that answers again releases it.
func TestLockStepOnAHungHost(t *testing.T) {
	t.Parallel() // each on its own sshd
	f, lockFile := lockFixture(t)
	h := &host{name: "pi", ssh: f.dial(t), dir: f.dir, stepTimeout: 2 * time.Second}
	now := time.Now()
	if err := h.lock(context.Background(), lockInfo{Host: "here", PID: 1, User: "me", Since: now, Expires: now.Add(time.Hour)}, 0, func(string) {}); err != nil {
		t.Fatal(err)
	}
	g := newGate(t)
	h.stepGate = g.cmd() // waits on its FIFO until let go: a step that hangs
	t.Cleanup(func() { letGo(t, g) })
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // an interrupted deploy releases its lock all the same
	err := h.unlock(ctx)
	if err == nil || !strings.Contains(err.Error(), "did not end within 2s: is its disk answering?") || !strings.Contains(err.Error(), "waits for it to expire") {
		t.Fatalf("the release on a hung host: %v", err)
	}
	if held, ok := readLock(t, lockFile); !ok || held.Nonce != h.held.Nonce {
		t.Errorf("the lock file is %+v (present %v), want the lock left as it was", held, ok)
	}
	letGo(t, g)
	h.stepGate = ""
	if err := h.unlock(context.Background()); err != nil {
		t.Fatalf("the release once the host answers: %v", err)
	}
	if _, ok := readLock(t, lockFile); ok {
		t.Error("the lock is still there")
	}
}

// letGo ends every step waiting at g's FIFOs.
func letGo(t *testing.T, g *gate) {
	t.Helper()
	for _, name := range g.waiting(t) {
		// A FIFO whose reader has gone cannot be opened to write without
		// one (ENXIO): nothing waits there.
		f, err := os.OpenFile(filepath.Join(g.dir, name), os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_ = f.Close()
		}
		g.released[name] = true
	}
}

// TestLockExpiryByTheHostsClock: a lock that says how long it lives is
// judged expired by the host's clock (the time since it was last
// written), whatever the clock of the laptop that wrote it, or of the one
// asking, says; and a lock file that holds no lock is replaced only once
// it is older than any lock lives unrenewed.
func TestLockExpiryByTheHostsClock(t *testing.T) {
	t.Parallel() // each on its own sshd
	f, lockFile := lockFixture(t)
	h := &host{name: "pi", ssh: f.dial(t), dir: f.dir}
	ctx := context.Background()
	now := time.Now()
	me := lockInfo{Host: "next", PID: 3, User: "me", Since: now, Expires: now.Add(time.Hour)}
	var said []string
	notify := func(m string) { said = append(said, m) }

	// Written a moment ago for 30 minutes by a laptop whose clock is two
	// hours slow: its Expires is long past by ours, and it is held.
	slow := now.Add(-2 * time.Hour).UTC()
	plant(t, lockFile, lockInfo{Host: "slow", PID: 1, User: "alice", Since: slow, Expires: slow.Add(30 * time.Minute), TTL: 1800, Nonce: "slow"})
	if err := h.lock(ctx, me, 0, notify); !errors.Is(err, ErrLocked) {
		t.Fatalf("a live lock from a slow laptop: %v, want ErrLocked", err)
	}

	// Written 31 minutes ago for 30 by a laptop two hours fast, never
	// renewed: its Expires is still ahead by ours, and it has expired.
	fast := now.Add(2 * time.Hour).UTC()
	plant(t, lockFile, lockInfo{Host: "fast", PID: 2, User: "bob", Since: fast, Expires: fast.Add(30 * time.Minute), TTL: 1800, Nonce: "fast"})
	written := now.Add(-31 * time.Minute)
	if err := os.Chtimes(lockFile, written, written); err != nil {
		t.Fatal(err)
	}
	if err := h.lock(ctx, me, 0, notify); err != nil {
		t.Fatalf("an expired lock from a fast laptop: %v", err)
	}
	if held, ok := readLock(t, lockFile); !ok || held.Nonce != h.held.Nonce {
		t.Fatalf("the lock file is %+v (present %v), want the new deploy's", held, ok)
	}
	if len(said) != 1 || !strings.Contains(said[0], "bob@fast") {
		t.Errorf("notices %q", said)
	}
	if err := h.unlock(ctx); err != nil {
		t.Fatal(err)
	}

	// An empty lock file (a power cut before the lock reached the disk)
	// is refused while it is recent, and replaced once it is old.
	if err := os.WriteFile(lockFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.lock(ctx, me, 0, notify); err == nil || !strings.Contains(err.Error(), "not a lock") {
		t.Fatalf("a recent empty lock file: %v, want it refused", err)
	}
	written = now.Add(-unreadableLockAge - time.Minute)
	if err := os.Chtimes(lockFile, written, written); err != nil {
		t.Fatal(err)
	}
	said = nil
	if err := h.lock(ctx, me, 0, notify); err != nil {
		t.Fatalf("an old empty lock file: %v", err)
	}
	if len(said) != 1 || !strings.Contains(said[0], "unreadable lock file") {
		t.Errorf("notices %q", said)
	}
	if err := h.unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
