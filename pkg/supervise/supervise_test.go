package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// The test binary doubles as the supervised programs: with
// LUCID_SUPERVISE_HELPER set it behaves as the named kind of program.
func TestMain(m *testing.M) {
	if mode := os.Getenv("LUCID_SUPERVISE_HELPER"); mode != "" {
		helper(mode)
		return
	}
	os.Exit(m.Run())
}

func helper(mode string) {
	writePID := func() {
		if dir := os.Getenv("HELPER_PID_DIR"); dir != "" {
			name := os.Getenv("HELPER_NAME")
			_ = os.WriteFile(filepath.Join(dir, name+".pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		}
	}
	waitTerm := func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		<-c
		os.Exit(0)
	}
	switch mode {
	case "crash":
		fmt.Println("crashing")
		os.Exit(3)
	case "sleep":
		writePID()
		fmt.Println("hello from stdout")
		fmt.Fprintln(os.Stderr, "hello from stderr")
		waitTerm()
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		writePID()
		select {}
	case "grandchild":
		gc := exec.Command(os.Args[0])
		gc.Env = append(os.Environ(), "LUCID_SUPERVISE_HELPER=ignore-term", "HELPER_NAME=grandchild")
		if err := gc.Start(); err != nil {
			os.Exit(1)
		}
		writePID()
		waitTerm()
	case "setsid-grandchild":
		// A child that leaves the group and keeps the pipes, then the
		// program dies.
		gc := exec.Command(os.Args[0])
		gc.Env = append(os.Environ(), "LUCID_SUPERVISE_HELPER=linger")
		gc.Stdout, gc.Stderr = os.Stdout, os.Stderr
		gc.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := gc.Start(); err != nil {
			os.Exit(1)
		}
		os.Exit(2)
	case "crash-leaving-child":
		// Leaves a child in its group that needs a moment after SIGTERM,
		// and crashes once it has run past its stop timeout.
		gc := exec.Command(os.Args[0])
		gc.Env = append(os.Environ(), "LUCID_SUPERVISE_HELPER=slow-term")
		if err := gc.Start(); err != nil {
			os.Exit(1)
		}
		// Its child handles SIGTERM before it crashes, however loaded
		// the machine: a program's life, not a test's wait.
		ready := filepath.Join(os.Getenv("HELPER_PID_DIR"), "slow-term.ready")
		tick := time.NewTicker(5 * time.Millisecond)
		for _, err := os.Stat(ready); err != nil; _, err = os.Stat(ready) {
			<-tick.C
		}
		life := time.NewTimer(300 * time.Millisecond)
		<-life.C
		os.Exit(2)
	case "slow-term":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM)
		_ = os.WriteFile(filepath.Join(os.Getenv("HELPER_PID_DIR"), "slow-term.ready"), nil, 0o644)
		<-c
		cleanup := time.NewTimer(20 * time.Millisecond) // its shutdown's work
		<-cleanup.C
		_ = os.WriteFile(filepath.Join(os.Getenv("HELPER_PID_DIR"), "slow-term.done"), nil, 0o644)
		os.Exit(0)
	case "linger":
		// Holds what it inherited for a minute, then goes by itself.
		if dir := os.Getenv("HELPER_PID_DIR"); dir != "" {
			_ = os.WriteFile(filepath.Join(dir, "linger-"+strconv.Itoa(os.Getpid())+".pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		}
		// Not a test waiting: a program that exits after its life.
		life := time.NewTimer(time.Minute)
		<-life.C
	case "supervisor":
		var specs []Spec
		for _, name := range []string{"a", "b"} {
			specs = append(specs, helperSpec(name, "sleep"))
		}
		sup, err := New(specs, Options{})
		if err != nil {
			os.Exit(1)
		}
		_ = sup.Run(context.Background())
	}
}

func helperSpec(name, mode string, env ...string) Spec {
	return Spec{
		Name: name,
		Path: os.Args[0],
		Env:  append(append(os.Environ(), "LUCID_SUPERVISE_HELPER="+mode, "HELPER_NAME="+name), env...),
	}
}

func skipUnlessUnix(t *testing.T) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("process groups and signals are Unix")
	}
}

// readPID waits for a helper to write its pid to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	testenv.Eventually(t, 10*time.Second, "a pid in "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(string(b))
		return err == nil
	})
	return pid
}

func waitGone(t *testing.T, pid int, within time.Duration, what string) {
	t.Helper()
	t.Cleanup(func() {
		if testenv.ProcessAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	testenv.Eventually(t, within, fmt.Sprintf("%s (pid %d) gone", what, pid), func() bool { return !testenv.ProcessAlive(pid) })
}

// recorder keeps every snapshot OnChange reports, with its time.
type recorder struct {
	mu      sync.Mutex
	snaps   []timedSnap
	changed chan struct{} // closed and replaced at each snapshot
}

type timedSnap struct {
	at   time.Time
	snap []Status
}

func (r *recorder) record(s []Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, timedSnap{time.Now(), s})
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// await waits until cond holds, checking it at each snapshot the
// supervisor reports, and fails t after within.
func (r *recorder) await(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		r.mu.Lock()
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()
		// Checked after taking the channel, so no change slips between.
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("%s: not within %s", what, within)
		}
	}
}

// transitions returns the times at which program name entered state.
func (r *recorder) transitions(name string, state State) []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []time.Time
	prev := State("")
	for _, ts := range r.snaps {
		for _, st := range ts.snap {
			if st.Name == name {
				if st.State == state && prev != state {
					out = append(out, ts.at)
				}
				prev = st.State
			}
		}
	}
	return out
}

func (r *recorder) waitState(t *testing.T, sup *Supervisor, name string, state State, within time.Duration) Status {
	t.Helper()
	var found Status
	r.await(t, within, fmt.Sprintf("%s reaching %s", name, state), func() bool {
		for _, st := range sup.Status() {
			if st.Name == name && st.State == state {
				found = st
				return true
			}
		}
		return false
	})
	return found
}

// start runs a supervisor for specs; the returned stop cancels it and waits
// for Run to return, once.
func start(t *testing.T, specs []Spec, opts Options) (sup *Supervisor, rec *recorder, stop func()) {
	t.Helper()
	rec = &recorder{}
	opts.OnChange = rec.record
	sup, err := New(specs, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(stop)
	return sup, rec, stop
}

func TestCrashRestartsWithGrowingBackoffThenFails(t *testing.T) {
	skipUnlessUnix(t)
	spec := helperSpec("crashy", "crash")
	spec.Restart = RestartPolicy{InitialBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, MaxDeaths: 5, Window: time.Minute}
	sup, rec, stop := start(t, []Spec{spec}, Options{})

	st := rec.waitState(t, sup, "crashy", StateFailed, 20*time.Second)
	if st.Restarts != 4 {
		t.Errorf("restarts = %d, want 4 (five deaths, the fifth gives up)", st.Restarts)
	}
	if st.LastExit != "exit status 3" {
		t.Errorf("last exit = %q", st.LastExit)
	}
	starts := rec.transitions("crashy", StateStarting)
	if len(starts) != 5 {
		t.Fatalf("started %d times, want 5", len(starts))
	}
	// The delays before restarts 1..4 are at least 50, 100, 200, 400 ms.
	for i, min := range []time.Duration{50, 100, 200, 400} {
		if gap := starts[i+1].Sub(starts[i]); gap < min*time.Millisecond {
			t.Errorf("gap before restart %d = %s, want at least %dms", i+1, gap, min)
		}
	}
	// Given up means nothing is scheduled; and until the supervisor stops,
	// nothing starts it again.
	if st.NextStart != nil {
		t.Errorf("a failed program has a restart scheduled at %s", st.NextStart)
	}
	stop()
	if got := len(rec.transitions("crashy", StateStarting)); got != 5 {
		t.Errorf("a failed program was started again (%d starts)", got)
	}
}

func TestBackoffPolicy(t *testing.T) {
	p := RestartPolicy{InitialBackoff: time.Second, MaxBackoff: 8 * time.Second, StableAfter: time.Minute}.withDefaults()
	var d time.Duration
	var got []time.Duration
	for range 6 {
		d = p.next(d, time.Second)
		got = append(got, d)
	}
	want := []time.Duration{1, 2, 4, 8, 8, 8}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoff sequence = %v", got)
		}
	}
	if d = p.next(d, 2*time.Minute); d != time.Second {
		t.Errorf("after a stable run, backoff = %s, want reset to 1s", d)
	}
}

func TestStopKillsProgramIgnoringSIGTERM(t *testing.T) {
	skipUnlessUnix(t)
	dir := t.TempDir()
	spec := helperSpec("stubborn", "ignore-term", "HELPER_PID_DIR="+dir)
	spec.StopTimeout = 300 * time.Millisecond
	sup, rec, stop := start(t, []Spec{spec}, Options{})
	rec.waitState(t, sup, "stubborn", StateReady, 10*time.Second)
	pid := readPID(t, filepath.Join(dir, "stubborn.pid"))

	begin := time.Now()
	stop()
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("stop took %s with a 300ms deadline", d)
	}
	waitGone(t, pid, 2*time.Second, "program ignoring SIGTERM")
	if st := sup.Status()[0]; st.State != StateStopped || st.LastExit != "signal: killed" {
		t.Errorf("status after stop = %+v", st)
	}
}

func TestGrandchildDoesNotOutliveStop(t *testing.T) {
	skipUnlessUnix(t)
	dir := t.TempDir()
	spec := helperSpec("parent", "grandchild", "HELPER_PID_DIR="+dir)
	spec.StopTimeout = 500 * time.Millisecond
	sup, rec, stop := start(t, []Spec{spec}, Options{})
	rec.waitState(t, sup, "parent", StateReady, 10*time.Second)
	gc := readPID(t, filepath.Join(dir, "grandchild.pid"))
	if !testenv.ProcessAlive(gc) {
		t.Fatal("grandchild not running")
	}
	stop()
	waitGone(t, gc, 3*time.Second, "grandchild")
}

func TestSupervisorKilledLeavesNoChild(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("children die with their parent only on Linux")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "LUCID_SUPERVISE_HELPER=supervisor", "HELPER_PID_DIR="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := readPID(t, filepath.Join(dir, "a.pid"))
	b := readPID(t, filepath.Join(dir, "b.pid"))
	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no chance to clean up
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitGone(t, a, 5*time.Second, "child a")
	waitGone(t, b, 5*time.Second, "child b")
}

func TestReadinessGatesDependants(t *testing.T) {
	skipUnlessUnix(t)
	readyFile := filepath.Join(t.TempDir(), "db.ready")
	db := helperSpec("db", "sleep")
	db.Ready = func(context.Context) error {
		_, err := os.Stat(readyFile)
		return err
	}
	api := helperSpec("api", "sleep")
	api.DependsOn = []string{"db"}
	web := helperSpec("web", "sleep")
	web.DependsOn = []string{"api"}
	// Listed out of order on purpose: the supervisor orders them.
	sup, rec, _ := start(t, []Spec{web, api, db}, Options{ProbeInterval: 20 * time.Millisecond})

	// db runs but is not ready until the test says so; meanwhile api waits.
	rec.waitState(t, sup, "db", StateStarting, 15*time.Second)
	if starts := rec.transitions("api", StateStarting); len(starts) != 0 {
		t.Fatal("api started while db was not ready")
	}
	if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec.waitState(t, sup, "web", StateReady, 15*time.Second)
	dbReady := rec.transitions("db", StateReady)
	apiStart := rec.transitions("api", StateStarting)
	apiReady := rec.transitions("api", StateReady)
	webStart := rec.transitions("web", StateStarting)
	if len(dbReady) != 1 || len(apiStart) != 1 || len(apiReady) != 1 || len(webStart) != 1 {
		t.Fatalf("transitions: db ready %v, api start %v, web start %v", dbReady, apiStart, webStart)
	}
	if apiStart[0].Before(dbReady[0]) {
		t.Errorf("api started %s before db was ready", dbReady[0].Sub(apiStart[0]))
	}
	if webStart[0].Before(apiReady[0]) {
		t.Errorf("web started before api was ready")
	}
	if names := []string{sup.Status()[0].Name, sup.Status()[1].Name, sup.Status()[2].Name}; names[0] != "db" || names[2] != "web" {
		t.Errorf("status order = %v, want start order", names)
	}
}

// TestCrashLeavesItsGroupAGrace: what a crashed program leaves in its
// process group gets SIGTERM and the stop timeout from the crash to end,
// not SIGKILL at once because the run lasted longer than that timeout.
func TestCrashLeavesItsGroupAGrace(t *testing.T) {
	skipUnlessUnix(t)
	dir := t.TempDir()
	spec := helperSpec("crashy", "crash-leaving-child", "HELPER_PID_DIR="+dir)
	spec.StopTimeout = 100 * time.Millisecond // the run outlives it before it crashes
	spec.Restart = RestartPolicy{MaxDeaths: 1, Window: time.Minute}
	sup, rec, _ := start(t, []Spec{spec}, Options{})
	rec.waitState(t, sup, "crashy", StateFailed, 20*time.Second)
	testenv.Eventually(t, 10*time.Second, "the child's shutdown done", func() bool {
		_, err := os.Stat(filepath.Join(dir, "slow-term.done"))
		return err == nil
	})
}

// TestAfterAFailedProgram: a program that starts after another, without
// needing it, starts once that one has failed for good, and is then ready
// by its ReadyWithout probe; one that depends on it keeps waiting. (A
// route to a service that cannot start answers 503 at the gateway; the
// gateway itself must run, though its /ready never passes.)
func TestAfterAFailedProgram(t *testing.T) {
	skipUnlessUnix(t)
	never := func(context.Context) error { return errors.New("never ready") }
	broken := helperSpec("broken", "crash")
	broken.Restart = RestartPolicy{InitialBackoff: 10 * time.Millisecond, MaxDeaths: 2, Window: time.Minute}
	broken.Ready = never
	front := helperSpec("front", "sleep")
	front.After = []string{"broken"}
	front.Ready = never // it waits for broken, which will not come
	front.ReadyWithout = func(context.Context) error { return nil }
	needy := helperSpec("needy", "sleep")
	needy.DependsOn = []string{"broken"}
	sup, rec, _ := start(t, []Spec{front, needy, broken}, Options{})
	rec.waitState(t, sup, "front", StateReady, 15*time.Second)
	failed := rec.transitions("broken", StateFailed)
	if starts := rec.transitions("front", StateStarting); len(failed) != 1 || starts[0].Before(failed[0]) {
		t.Errorf("front started at %v, broken failed at %v: it should start once broken has failed", starts, failed)
	}
	for _, st := range sup.Status() {
		if st.Name == "needy" && st.State != StateWaiting {
			t.Errorf("needy, which depends on a failed program, is %s", st.State)
		}
	}
	// One it starts after that waits on the failed one will not run
	// either: the engine failing leaves anchoring waiting, and the
	// gateway must not wait on it for ever.
	waiting := helperSpec("waiting", "sleep")
	waiting.DependsOn = []string{"broken"}
	front2 := helperSpec("front2", "sleep")
	front2.After = []string{"waiting"}
	front2.Ready = never
	front2.ReadyWithout = func(context.Context) error { return nil }
	broken2 := broken
	broken2.Name = "broken"
	sup2, rec2, _ := start(t, []Spec{front2, waiting, broken2}, Options{})
	rec2.waitState(t, sup2, "front2", StateReady, 15*time.Second)
	if _, err := New([]Spec{{Name: "a", Path: "x", After: []string{"nope"}}}, Options{}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("a program after an undefined one: %v", err)
	}
}

type lineSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *lineSink) Line(program string, stream Stream, line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, program+"/"+string(stream)+": "+string(line))
}

func (s *lineSink) has(want string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if l == want {
			return true
		}
	}
	return false
}

func TestOutputReachesSink(t *testing.T) {
	skipUnlessUnix(t)
	sink := &lineSink{}
	sup, rec, _ := start(t, []Spec{helperSpec("talker", "sleep")}, Options{Logs: sink})
	rec.waitState(t, sup, "talker", StateReady, 10*time.Second)
	testenv.Eventually(t, 5*time.Second, "both lines in the sink", func() bool {
		return sink.has("talker/stdout: hello from stdout") && sink.has("talker/stderr: hello from stderr")
	})
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		specs []Spec
		want  string
	}{
		{"cycle", []Spec{{Name: "a", Path: "x", DependsOn: []string{"b"}}, {Name: "b", Path: "x", DependsOn: []string{"a"}}}, "cycle"},
		{"unknown dep", []Spec{{Name: "a", Path: "x", DependsOn: []string{"nope"}}}, `"nope"`},
		{"duplicate", []Spec{{Name: "a", Path: "x"}, {Name: "a", Path: "x"}}, "twice"},
		{"no command", []Spec{{Name: "a"}}, "no command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.specs, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestNotReadyInTimeIsKilledAndRestarted: a program that starts but never
// becomes ready is killed after ReadyTimeout and counts as a death.
func TestNotReadyInTimeIsKilledAndRestarted(t *testing.T) {
	skipUnlessUnix(t)
	spec := helperSpec("sluggish", "sleep")
	spec.Ready = func(context.Context) error { return fmt.Errorf("not yet") }
	spec.Restart = RestartPolicy{InitialBackoff: 20 * time.Millisecond, MaxDeaths: 2, Window: time.Minute}
	sup, rec, _ := start(t, []Spec{spec}, Options{ReadyTimeout: 300 * time.Millisecond, ProbeInterval: 20 * time.Millisecond})
	st := rec.waitState(t, sup, "sluggish", StateFailed, 10*time.Second)
	if st.LastExit != "not ready within 300ms, so killed (not yet)" || st.Restarts != 1 {
		t.Errorf("status = %+v", st)
	}
	if got := len(rec.transitions("sluggish", StateReady)); got != 0 {
		t.Errorf("reported ready %d times", got)
	}
}

// TestDeathsAgeOutOfTheWindow: deaths spread wider than the window never
// add up to a failure.
func TestDeathsAgeOutOfTheWindow(t *testing.T) {
	skipUnlessUnix(t)
	spec := helperSpec("flaky", "crash")
	spec.Restart = RestartPolicy{InitialBackoff: 150 * time.Millisecond, MaxBackoff: 150 * time.Millisecond, MaxDeaths: 3, Window: 200 * time.Millisecond}
	sup, rec, _ := start(t, []Spec{spec}, Options{})
	// Five starts are four deaths, more than MaxDeaths had they counted
	// together.
	rec.await(t, 20*time.Second, "five starts of flaky", func() bool {
		return len(rec.transitions("flaky", StateStarting)) >= 5
	})
	if failed := rec.transitions("flaky", StateFailed); len(failed) > 0 {
		t.Fatalf("failed after %d restarts although deaths were %s apart with a %s window", sup.Status()[0].Restarts, 150*time.Millisecond, 200*time.Millisecond)
	}
}

// TestNeverReadyFailsWhateverTheWindow: a program that never becomes ready
// fails after MaxDeaths such runs in a row, though each takes longer than
// the window counts deaths over, and no such run resets the backoff.
func TestNeverReadyFailsWhateverTheWindow(t *testing.T) {
	skipUnlessUnix(t)
	spec := helperSpec("stuck", "sleep")
	spec.Ready = func(context.Context) error { return fmt.Errorf("503") }
	spec.Restart = RestartPolicy{InitialBackoff: 20 * time.Millisecond, StableAfter: 100 * time.Millisecond, MaxDeaths: 3, Window: 100 * time.Millisecond}
	var logs testenv.SyncBuffer
	sup, rec, _ := start(t, []Spec{spec}, Options{ReadyTimeout: 300 * time.Millisecond, ProbeInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	st := rec.waitState(t, sup, "stuck", StateFailed, 20*time.Second)
	if st.Restarts != 2 || !strings.HasPrefix(st.LastExit, "not ready within") {
		t.Errorf("status = %+v", st)
	}
	// Each run outlived StableAfter, yet none was stable: the delays the
	// supervisor chose double.
	var delays []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "restarting") {
			if _, d, ok := strings.Cut(line, "backoff="); ok {
				delays = append(delays, strings.Fields(d)[0])
			}
		}
	}
	if strings.Join(delays, " ") != "20ms 40ms" {
		t.Errorf("restart delays %v, want 20ms then 40ms", delays)
	}
}

// TestChildKeepingThePipesHoldsNoRestart: a program whose child left its
// process group with the output pipes still open is restarted when it
// dies, rather than the supervisor waiting for that child.
func TestChildKeepingThePipesHoldsNoRestart(t *testing.T) {
	skipUnlessUnix(t)
	dir := t.TempDir()
	spec := helperSpec("leaky", "setsid-grandchild", "HELPER_PID_DIR="+dir)
	spec.Restart = RestartPolicy{InitialBackoff: 20 * time.Millisecond, MaxDeaths: 10, Window: time.Minute}
	_, rec, _ := start(t, []Spec{spec}, Options{})
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join(dir, "linger-*.pid"))
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				if pid, err := strconv.Atoi(string(b)); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	rec.await(t, 20*time.Second, "leaky started again", func() bool {
		return len(rec.transitions("leaky", StateStarting)) >= 2
	})
}
