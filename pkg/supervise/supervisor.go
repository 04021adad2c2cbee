package supervise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"time"
)

// State is where a program is in its life.
type State string

// The states of a program. Their names are part of `lucidctl status --json`.
const (
	StateWaiting  State = "waiting"  // for its dependencies to be ready
	StateStarting State = "starting" // started, not yet ready
	StateReady    State = "ready"
	StateBackoff  State = "backoff" // died; waiting to restart
	StateFailed   State = "failed"  // died too often; given up
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
)

// Status is a snapshot of one program.
type Status struct {
	Name     string    `json:"name"`
	State    State     `json:"state"`
	PID      int       `json:"pid,omitempty"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	LastExit string    `json:"last_exit,omitempty"`
	// NextStart is when a program in backoff will be started again.
	NextStart *time.Time `json:"next_start,omitempty"`
}

// Stream names the output a log line came from.
type Stream string

// The two output streams of a program.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// LogSink receives each line a program writes, without its newline. It is
// called from several goroutines and must not retain line.
type LogSink interface {
	Line(program string, stream Stream, line []byte)
}

// Options tune a Supervisor.
type Options struct {
	// Logs receives program output; nil discards it.
	Logs LogSink
	// OnChange is called after every state change with a full snapshot.
	// Calls are serialised and arrive in order. It must not call the
	// Supervisor's methods.
	OnChange func([]Status)
	// Logger receives the supervisor's own diagnostics; nil discards them.
	Logger *slog.Logger
	// ReadyTimeout is how long a started program may take to become ready
	// before it is killed and counted as a death. Default one minute.
	ReadyTimeout time.Duration
	// ProbeInterval is the pause between readiness probes. Default 200 ms.
	ProbeInterval time.Duration
}

// Supervisor runs and restarts a fixed set of programs.
type Supervisor struct {
	opts     Options
	programs []*program // start order

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every state change

	// notifyMu serialises OnChange. It is taken before mu is released
	// (hand over hand), so snapshots reach OnChange in the order they were
	// taken without holding mu during the callback.
	notifyMu sync.Mutex
}

type program struct {
	spec   Spec
	policy RestartPolicy
	stop   chan struct{} // closed to stop this program for good
	done   chan struct{} // closed when its goroutine has returned

	// Guarded by Supervisor.mu.
	status Status
}

// New validates specs and returns a Supervisor for them.
func New(specs []Spec, opts Options) (*Supervisor, error) {
	order, err := validate(specs)
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = time.Minute
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 200 * time.Millisecond
	}
	s := &Supervisor{opts: opts, changed: make(chan struct{})}
	now := time.Now()
	for _, spec := range order {
		if spec.StopTimeout <= 0 {
			spec.StopTimeout = DefaultStopTimeout
		}
		s.programs = append(s.programs, &program{
			spec:   spec,
			policy: spec.Restart.withDefaults(),
			stop:   make(chan struct{}),
			done:   make(chan struct{}),
			status: Status{Name: spec.Name, State: StateWaiting, Since: now},
		})
	}
	return s, nil
}

// Run starts every program and supervises them until ctx ends; then it
// stops them, dependants before their dependencies, and returns.
func (s *Supervisor) Run(ctx context.Context) error {
	for _, p := range s.programs {
		go func() {
			defer close(p.done)
			s.supervise(p)
		}()
	}
	<-ctx.Done()
	for _, p := range slices.Backward(s.programs) {
		close(p.stop)
		<-p.done
	}
	return nil
}

// Status returns a snapshot of every program, in start order.
func (s *Supervisor) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *Supervisor) snapshotLocked() []Status {
	out := make([]Status, len(s.programs))
	for i, p := range s.programs {
		out[i] = p.status
	}
	return out
}

// set updates p's status and tells the OnChange callback.
func (s *Supervisor) set(p *program, update func(*Status)) {
	s.mu.Lock()
	before := p.status.State
	update(&p.status)
	if p.status.State != before {
		p.status.Since = time.Now()
	}
	close(s.changed)
	s.changed = make(chan struct{})
	snap := s.snapshotLocked()
	s.notifyMu.Lock()
	s.mu.Unlock()
	defer s.notifyMu.Unlock()
	if s.opts.OnChange != nil {
		s.opts.OnChange(snap)
	}
}

// waitDeps blocks until every dependency of p is ready, and every program
// it starts after is ready or will not run (failed, or waiting on one
// that failed). It returns false if p is stopped first.
func (s *Supervisor) waitDeps(p *program) bool {
	for {
		s.mu.Lock()
		ready := true
		for _, q := range s.programs {
			switch {
			case slices.Contains(p.spec.DependsOn, q.spec.Name):
				ready = ready && q.status.State == StateReady
			case slices.Contains(p.spec.After, q.spec.Name):
				ready = ready && (q.status.State == StateReady || s.blockedLocked(q))
			}
		}
		changed := s.changed
		s.mu.Unlock()
		if ready {
			return true
		}
		select {
		case <-changed:
		case <-p.stop:
			return false
		}
	}
}

// anyFailed reports whether a program of names will not run: failed for
// good, or waiting on one that has.
func (s *Supervisor) anyFailed(names []string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.programs {
		if slices.Contains(names, q.spec.Name) && s.blockedLocked(q) {
			return true
		}
	}
	return false
}

// blockedLocked reports whether q will not run until the supervisor is
// started again: it failed, or it waits on a dependency that is blocked
// (the graph has no cycle). s.mu is held.
func (s *Supervisor) blockedLocked(q *program) bool {
	switch q.status.State {
	case StateFailed:
		return true
	case StateWaiting:
		for _, d := range s.programs {
			if slices.Contains(q.spec.DependsOn, d.spec.Name) && s.blockedLocked(d) {
				return true
			}
		}
	}
	return false
}

// supervise is the life of one program: wait, start, watch, restart.
func (s *Supervisor) supervise(p *program) {
	// Linux delivers a child's parent-death signal when the thread that
	// started it exits (go.dev/issue/27505). Pinning this goroutine to its
	// thread keeps that thread alive exactly as long as the child matters.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	log := s.opts.Logger.With("program", p.spec.Name)
	var deaths []time.Time
	var backoff time.Duration
	unready := 0 // runs in a row that ended without becoming ready
	for {
		if !s.waitDeps(p) {
			s.set(p, func(st *Status) { st.State, st.PID, st.NextStart = StateStopped, 0, nil })
			return
		}
		started := time.Now()
		exit, ready, stopped := s.runOnce(p, log)
		if stopped {
			s.set(p, func(st *Status) { st.State, st.PID, st.LastExit = StateStopped, 0, exit })
			return
		}

		now := time.Now()
		deaths = append(deaths, now)
		deaths = slices.DeleteFunc(deaths, func(t time.Time) bool { return now.Sub(t) > p.policy.Window })
		ran := now.Sub(started)
		if ready {
			unready = 0
		} else {
			// A run that never became ready was no stable one however
			// long it lasted, and as many of them in a row as MaxDeaths
			// fail the program even when each took longer than Window
			// allows for (the ready timeout).
			unready++
			ran = 0
		}
		if len(deaths) >= p.policy.MaxDeaths || unready >= p.policy.MaxDeaths {
			log.Warn("program failed too often; giving up", "deaths", len(deaths), "window", p.policy.Window, "never_ready", unready, "last_exit", exit)
			s.set(p, func(st *Status) { st.State, st.PID, st.LastExit = StateFailed, 0, exit })
			<-p.stop
			return
		}
		backoff = p.policy.next(backoff, ran)
		next := now.Add(backoff)
		log.Info("program died; restarting", "last_exit", exit, "backoff", backoff)
		s.set(p, func(st *Status) {
			st.State, st.PID, st.LastExit, st.NextStart = StateBackoff, 0, exit, &next
			st.Restarts++
		})
		select {
		case <-time.After(backoff):
			s.set(p, func(st *Status) { st.NextStart = nil })
		case <-p.stop:
			s.set(p, func(st *Status) { st.State, st.NextStart = StateStopped, nil })
			return
		}
	}
}

// runOnce starts p and waits for it to end. It returns how the process
// ended, whether it had become ready, and whether it ended because p was
// stopped.
func (s *Supervisor) runOnce(p *program, log *slog.Logger) (exit string, ready, stopped bool) {
	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	cmd.Env = p.spec.Env
	cmd.Dir = p.spec.Dir
	configure(cmd)

	var readers sync.WaitGroup
	outW, errW, cut, err := s.pipes(p.spec.Name, &readers)
	if err != nil {
		return fmt.Sprintf("start: %v", err), false, false
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	err = cmd.Start()
	// The child holds its own copies; ours only keep the readers from
	// seeing EOF, and closing them cannot lose data.
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		readers.Wait()
		log.Warn("start failed", "error", err)
		return fmt.Sprintf("start: %v", err), false, false
	}
	s.set(p, func(st *Status) { st.State, st.PID = StateStarting, cmd.Process.Pid })
	log.Debug("started", "pid", cmd.Process.Pid)

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	probeCtx, cancelProbe := context.WithCancel(context.Background())
	defer cancelProbe()
	readyc := make(chan error, 1)
	go func() { readyc <- s.awaitReady(probeCtx, p) }()

	var waitErr, notReady error
	var deadline time.Time // for what the group holds once the leader is gone
	for done := false; !done; {
		select {
		case err := <-readyc:
			if err != nil {
				log.Warn("not ready in time; killing it", "timeout", s.opts.ReadyTimeout, "error", err)
				notReady = err
				_ = kill(cmd.Process)
				continue
			}
			ready = true
			s.set(p, func(st *Status) { st.State = StateReady })
		case waitErr = <-exited:
			// A crash: what it left in its group gets the stop timeout
			// from now, not from when the run began.
			deadline = time.Now().Add(p.spec.StopTimeout)
			done = true
		case <-p.stop:
			s.set(p, func(st *Status) { st.State = StateStopping })
			deadline = time.Now().Add(p.spec.StopTimeout)
			waitErr = stopGroup(cmd.Process, exited, deadline)
			stopped = true
			done = true
		}
	}
	// Whatever the leader left behind in its group goes with it, within the
	// same deadline.
	reapGroup(cmd.Process.Pid, deadline)
	// A child that left the group (setsid) may still hold the pipes: what
	// it writes from now on is not this run's, and the readers stop.
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(readersGrace):
		cut()
		<-drained
	}
	exit = describeExit(waitErr)
	if notReady != nil && !stopped {
		exit = fmt.Sprintf("not ready within %s, so killed (%v)", s.opts.ReadyTimeout, notReady)
	}
	return exit, ready, stopped
}

// readersGrace is how long the output readers get to reach the end of a
// run's pipes once its process group is gone.
const readersGrace = 2 * time.Second

// awaitReady probes p until it is ready, the ready timeout passes, or ctx
// ends (the process exited or is being stopped).
func (s *Supervisor) awaitReady(ctx context.Context, p *program) error {
	if p.spec.Ready == nil {
		return nil
	}
	deadline := time.Now().Add(s.opts.ReadyTimeout)
	var last error
	for {
		probe := p.spec.Ready
		if p.spec.ReadyWithout != nil && s.anyFailed(p.spec.After) {
			probe = p.spec.ReadyWithout
		}
		pctx, cancel := context.WithTimeout(ctx, s.opts.ProbeInterval*5)
		last = probe(pctx)
		cancel()
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return last
		}
		select {
		case <-ctx.Done():
			return ctx.Err() // nobody is listening any more
		case <-time.After(s.opts.ProbeInterval):
		}
	}
}

// stopGroup asks the group to stop, and kills it if the leader has not
// exited by deadline.
func stopGroup(proc *os.Process, exited <-chan error, deadline time.Time) error {
	_ = terminate(proc)
	select {
	case err := <-exited:
		return err
	case <-time.After(time.Until(deadline)):
		_ = kill(proc)
		return <-exited
	}
}

// reapGroup gives the rest of the leader's group until deadline to exit
// after SIGTERM, then kills what remains.
func reapGroup(pgid int, deadline time.Time) {
	if !groupAlive(pgid) {
		return
	}
	_ = signalTerm(pgid)
	for groupAlive(pgid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = signalKill(pgid)
}

func describeExit(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState.String()
	}
	return err.Error()
}

// pipes returns the write ends the child gets for stdout and stderr, and
// starts readers that pass each line to the log sink. os.Pipe rather than
// cmd.StdoutPipe: a grandchild may keep the pipe open after the child
// exits, and cmd.Wait must not wait for it. cut makes the readers stop at
// once, whatever they are reading.
func (s *Supervisor) pipes(name string, readers *sync.WaitGroup) (outW, errW *os.File, cut func(), err error) {
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close() // unused; the failure is what to report
		_ = outW.Close()
		return nil, nil, nil, err
	}
	cut = func() {
		// A read end is closed by its reader; a deadline ends its read.
		_ = outR.SetReadDeadline(time.Unix(1, 0))
		_ = errR.SetReadDeadline(time.Unix(1, 0))
	}
	for _, x := range []struct {
		r      *os.File
		stream Stream
	}{{outR, Stdout}, {errR, Stderr}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer func() { _ = x.r.Close() }() // a read end: no data to lose
			s.copyLines(name, x.stream, x.r)
		}()
	}
	return outW, errW, cut, nil
}

// maxLine bounds one log line; longer lines are passed on in pieces.
const maxLine = 64 << 10

func (s *Supervisor) copyLines(name string, stream Stream, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 && s.opts.Logs != nil {
			if line[len(line)-1] == '\n' {
				line = line[:len(line)-1]
			}
			s.opts.Logs.Line(name, stream, line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
