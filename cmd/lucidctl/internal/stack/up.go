package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/supervise"
)

// UpOptions are the inputs of `lucidctl up`.
type UpOptions struct {
	Env      *cli.Env
	Services []string
	Detach   bool
	Lucid    string
	Consul   string
	// PortOffset shifts every port and names the stack; nil takes
	// local.port_offset of lucid.yaml.
	PortOffset  *int
	NoMTLS      bool
	WaitTimeout time.Duration
	// supervisor is set in the background process that `up -d` starts.
	supervisor bool
}

func newUpCmd(env *cli.Env) *cobra.Command {
	opts := &UpOptions{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "up [service...]",
		Short: "Run the core services locally under a supervisor",
		Long: `Run Lucid's core services on this machine from the lucid binary, each as a
supervised child process: started in dependency order once what they need is
ready, restarted with capped backoff when they die, given up on after too
many deaths, and stopped together.

Naming services runs those and what they need to start (anchoring needs the
engine, the data chain anchoring; with mTLS every service needs the mesh
controller), nothing more: the gateway needs none of the services it routes
to, and a route to one that is not running answers 503.

Discovery: a Consul agent runs as a dev agent with ACLs and the services are
pointed at it. --consul auto (the default, local.consul of lucid.yaml) takes
LUCID_CONSUL_BIN, else consul on PATH, else the agent scripts/build-consul.sh
(make consul, the test command) caches under ~/.cache/lucid/tools; --consul
build runs that build first (a few minutes, once; from the source tree);
--consul PATH names one; --consul off runs without. Without an agent the
gateway finds the services at their fixed addresses (static discovery), and
up says so.

Secrets the services need and the env file lacks are generated into it.

The services speak mTLS to each other with certificates from the mesh
controller, which therefore always runs; --no-mtls turns that off.

A stack is known by its port offset (--port-offset, else local.port_offset
of lucid.yaml): stacks at different offsets run side by side, each with its
own state, logs and data (<state_dir>/offset-N), and status, logs and down
take the same --port-offset to address one.

In the foreground, logs stream here with a colored prefix and Ctrl-C stops
the stack. With -d the supervisor runs in the background; use status, logs
and down.`,
		Example: `  lucidctl up
  lucidctl up -d
  lucidctl up -d --consul build
  lucidctl up -d gateway --port-offset 1000    # beside the first; down --port-offset 1000 stops it`,
		ValidArgs: catalog.Names(),
		Args:      cli.OnlyValidArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Services = args
			opts.PortOffset = givenOffset(cmd, offset)
			return runUp(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&opts.Detach, "detach", "d", false, "run in the background and return once the services are ready")
	f.StringVar(&opts.Lucid, "lucid", "", "the lucid binary to run (default: next to lucidctl, on PATH, or built from the source tree)")
	f.StringVar(&opts.Consul, "consul", "", `Consul agent: "auto", "build", "off" or a path (default: local.consul of lucid.yaml, "auto")`)
	f.BoolVar(&opts.NoMTLS, "no-mtls", false, "run without the mesh's mTLS: plain HTTP between services")
	portOffsetFlag(cmd, &offset, "add N to every port, to run a second stack beside the first (default: local.port_offset of lucid.yaml)")
	f.DurationVar(&opts.WaitTimeout, "wait-timeout", 2*time.Minute, "with -d, how long to wait for the services to be ready")
	f.BoolVar(&opts.supervisor, "supervisor", false, "run as the background supervisor (used by up -d)")
	_ = f.MarkHidden("supervisor")
	return cmd
}

func runUp(ctx context.Context, opts *UpOptions) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	offset, err := portOffset(cfg, opts.PortOffset)
	if err != nil {
		return err
	}
	l := newLayout(cfg.Abs(cfg.Local.StateDir), offset)
	if supervisorRunning(l) {
		pid := 0
		if st, err := readState(l); err == nil {
			pid = st.SupervisorPID
		}
		return errAlreadyRunning(pid, offset)
	}
	p, err := makePlan(ctx, opts, cfg, l, offset)
	if err != nil {
		return err
	}
	if err := p.checkPortsFree(); err != nil {
		return err
	}
	if opts.Detach && !opts.supervisor {
		return startDetached(ctx, opts, l, p)
	}
	return supervisePlan(ctx, opts, l, p)
}

// makePlan resolves the binaries, services and environment of the stack.
func makePlan(ctx context.Context, opts *UpOptions, cfg *projectconfig.Config, l layout, offset int) (*plan, error) {
	services := catalog.Services
	if len(opts.Services) > 0 {
		names := opts.Services
		if !opts.NoMTLS {
			names = append(slices.Clone(names), catalog.MeshService)
		}
		var err error
		if services, err = catalog.Closure(names); err != nil {
			return nil, cli.Usage(err)
		}
	}
	p := &plan{portOffset: offset, mtls: !opts.NoMTLS, services: services, host: cfg.Local.Name}
	// Say what a service that routes to others runs without.
	for _, s := range services {
		if absent := p.absent(s.After); len(absent) > 0 && !opts.supervisor {
			fmt.Fprintf(opts.Env.IO.ErrOut, "%s runs without %s: its routes to them answer 503 until they run\n", s.Name, strings.Join(absent, ", "))
		}
	}

	// The project's route table, checked now rather than by a gateway
	// that would exit and be restarted over and over.
	switch routes, err := deployfiles.ReadRoutes(cfg.Dir); {
	case err != nil:
		return nil, err
	case routes != nil:
		rp := filepath.Join(cfg.Dir, filepath.FromSlash(deployfiles.RoutesPath))
		if _, err := routetable.Parse(rp, routes); err != nil {
			return nil, cli.Problems(err)
		}
		p.routes = rp
	}
	var err error
	if p.lucid, err = findLucid(ctx, opts.Lucid, l.binDir(), opts.Env.IO.ErrOut); err != nil {
		return nil, err
	}
	consul := cfg.Local.Consul
	if opts.Consul != "" {
		consul = opts.Consul
	}
	if p.consul, err = findConsul(ctx, consul, opts.Env.Getenv, opts.Env.IO.ErrOut); err != nil {
		return nil, err
	}
	if !opts.supervisor {
		noteDiscovery(opts.Env, consul, p.consul)
	}
	if p.values, err = operatorValues(opts, cfg, upSecrets(services, p.mtls, p.consul != "")); err != nil {
		return nil, err
	}
	return p, nil
}

// noteDiscovery says on stderr, in one line, how the services will be
// discovered, and how to get Consul when it does not run.
func noteDiscovery(env *cli.Env, setting, consul string) {
	w := env.IO.ErrOut
	switch {
	case consul != "":
		fmt.Fprintf(w, "discovery: consul (agent %s)\n", consul)
	case setting == consulOff:
		fmt.Fprintln(w, "discovery: static (Consul is off): the gateway finds the services at their fixed addresses")
	default:
		fmt.Fprintf(w, "discovery: static: no Consul agent found (%s); `lucidctl up --consul build` builds one once (a few minutes), or put consul on PATH\n",
			consulPlaces(env.Getenv))
	}
}

// encryptionKey is the data chain's key at rest: a secret the stack can do
// without.
const encryptionKey = "ENCRYPTION_KEY"

// upSecrets are the secrets a stack needs: the catalog's and each
// service's credential (see catalog.Service.RequiredSecrets; with mTLS the
// mesh controller always runs, so its mesh token is among them), the
// operator token for maintenance, and Consul's management token when
// Consul runs.
func upSecrets(services []catalog.Service, mtls, consul bool) []string {
	keys := []string{"LUCID_OPERATOR_TOKEN"}
	for _, s := range services {
		for _, k := range s.RequiredSecrets(mtls) {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	if consul {
		keys = append(keys, deployfiles.ConsulTokenKey)
	}
	return keys
}

// operatorValues are the operator's settings and secrets for the stack:
// the environment's, then the env file's for what the environment lacks.
// Secrets the stack needs and neither has are generated into the env file
// first. Each service is then given only its own part (deployfiles.
// ServiceEnv), as a deployed container is.
func operatorValues(opts *UpOptions, cfg *projectconfig.Config, secrets []string) (map[string]string, error) {
	path := cfg.Abs(cfg.Local.EnvFile)
	missing := map[string]string{}
	for _, key := range secrets {
		if opts.Env.Getenv(key) == "" {
			if key == deployfiles.ConsulTokenKey {
				missing[key] = uuid.NewString()
			} else {
				missing[key] = envfile.NewSecret(48)
			}
		}
	}
	if len(missing) > 0 && !opts.supervisor {
		added, err := envfile.AddMissing(path, missing)
		if err != nil {
			return nil, err
		}
		for _, k := range added {
			fmt.Fprintf(opts.Env.IO.ErrOut, "generated %s in %s (mode 0600)\n", k, path)
		}
	}
	values := map[string]string{}
	if _, err := os.Stat(path); err == nil {
		if values, err = envfile.Read(path); err != nil {
			return nil, err
		}
	}
	for _, k := range lucidKeys() {
		if v := opts.Env.Getenv(k); v != "" {
			values[k] = v
		}
	}
	// A secret that is there but too weak would crash-loop its service;
	// say so now, once: the secrets the stack needs, and the data chain's
	// encryption keys, which it can do without but takes when set.
	from := func(key string) string {
		if opts.Env.Getenv(key) != "" {
			return "the environment"
		}
		return path
	}
	for _, key := range secrets {
		if v := values[key]; key != deployfiles.ConsulTokenKey && len(v) < catalog.SecretMinLen {
			return nil, cli.WithHint(fmt.Errorf("%s from %s is %d bytes; the stack needs at least %d", key, from(key), len(v), catalog.SecretMinLen),
				"remove it from "+from(key)+" and `lucidctl up` generates a strong one")
		}
	}
	if v := values[encryptionKey]; v != "" && len(v) < catalog.SecretMinLen {
		return nil, cli.WithHint(fmt.Errorf("%s from %s is %d bytes; the data chain needs at least %d", encryptionKey, from(encryptionKey), len(v), catalog.SecretMinLen),
			"set one of at least 32 bytes (for example `openssl rand -base64 48`), or remove it to store chunks unencrypted")
	}
	if v := values[keyring.EncryptionPrevious]; v != "" {
		previous, err := keyring.Parse(v)
		if err == nil {
			for i, e := range previous {
				if len(e.Value) < catalog.SecretMinLen {
					err = fmt.Errorf("entry %d is %d bytes; at least %d are required", i+1, len(e.Value), catalog.SecretMinLen)
					break
				}
			}
		}
		if err != nil {
			return nil, cli.WithHint(fmt.Errorf("%s from %s: %w", keyring.EncryptionPrevious, from(keyring.EncryptionPrevious), err),
				"`lucidctl secrets rotate ENCRYPTION_KEY` writes it; mend or remove the entry")
		}
	}
	if consul := values[deployfiles.ConsulTokenKey]; consul != "" {
		if _, err := uuid.Parse(consul); err != nil {
			return nil, cli.WithHint(fmt.Errorf("%s must be a UUID (Consul's management token)", deployfiles.ConsulTokenKey),
				"remove it from "+path+" and `lucidctl up` generates one")
		}
	}
	return values, nil
}

// lucidKeys names every variable of the stack: what any service reads and
// the operator's secrets. A service's process gets only its own of these.
func lucidKeys() []string {
	keys := slices.Clone(deployfiles.Secrets)
	for _, s := range catalog.Services {
		for _, k := range s.Vars() {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// supervisePlan runs the stack in this process until ctx ends.
func supervisePlan(ctx context.Context, opts *UpOptions, l layout, p *plan) error {
	specs, err := p.specs(l)
	if err != nil {
		return err
	}
	var term = opts.Env.IO.ErrOut
	if opts.supervisor {
		term = nil // the background supervisor's output is the log files
	} else {
		// A terminal piped through tee, which Ctrl-C ends too: Go's
		// default for a write to a broken pipe on stderr is to die of
		// SIGPIPE, mid-shutdown, leaving the services killed rather than
		// stopped. Asked for, the signal only fails the write, and the
		// sink stops writing there. The services do not inherit this.
		sigpipe := make(chan os.Signal, 1)
		signal.Notify(sigpipe, syscall.SIGPIPE)
		defer signal.Stop(sigpipe)
	}
	if err := l.makePrivate(); err != nil {
		return err
	}
	release, err := acquireLock(l.lockFile())
	if errors.Is(err, errLocked) {
		return errAlreadyRunning(0, p.portOffset)
	} else if err != nil {
		return fmt.Errorf("lock %s: %w", l.lockFile(), err)
	}
	defer release()
	sink, err := newLogSink(l, p.names(), term, opts.Env.IO.ErrStyles())
	if err != nil {
		return err
	}
	defer func() {
		// Lost log lines do not make the stack's run fail; they are said.
		if err := sink.Close(); err != nil {
			opts.Env.Logger.Warn("cannot write the logs", "error", err)
		}
	}()

	_ = os.Remove(l.stopFile())
	urls := p.urls()
	st := &stackState{Running: true, SupervisorPID: os.Getpid(), StartedAt: time.Now().UTC(), Discovery: p.discovery()}
	var prev []supervise.Status
	onChange := func(snap []supervise.Status) {
		noteTransitions(sink, prev, snap, urls)
		prev = snap
		st.Services = st.Services[:0]
		for _, s := range snap {
			st.Services = append(st.Services, serviceState{Status: s, URL: urls[s.Name]})
		}
		if err := writeState(l, st); err != nil {
			opts.Env.Logger.Warn("cannot write the state file", "error", err)
		}
	}
	sup, err := supervise.New(specs, supervise.Options{Logs: sink, OnChange: onChange, Logger: opts.Env.Logger})
	if err != nil {
		return err
	}
	onChange(sup.Status())
	sink.Note("supervising %s (lucid: %s)", strings.Join(p.names(), ", "), p.lucid)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go watchStopFile(runCtx, l, cancel)
	err = sup.Run(runCtx)
	st.Running = false
	onChange(sup.Status())
	sink.Note("stopped")
	return err
}

// watchStopFile cancels the stack when `down` asks for it through the stop
// file, the way that works on every OS.
func watchStopFile(ctx context.Context, l layout, cancel context.CancelFunc) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := os.Stat(l.stopFile()); err == nil {
				cancel()
				return
			}
		}
	}
}

// noteTransitions writes one line per state change a person cares about.
func noteTransitions(sink *logSink, prev, cur []supervise.Status, urls map[string]string) {
	was := map[string]supervise.Status{}
	for _, s := range prev {
		was[s.Name] = s
	}
	for _, s := range cur {
		if p, ok := was[s.Name]; ok && p.State == s.State {
			continue
		}
		switch s.State {
		case supervise.StateStarting:
			sink.Note("%s started (pid %d)", s.Name, s.PID)
		case supervise.StateReady:
			sink.Note("%s is ready at %s", s.Name, urls[s.Name])
		case supervise.StateBackoff:
			wait := ""
			if s.NextStart != nil {
				wait = " in " + time.Until(*s.NextStart).Round(100*time.Millisecond).String()
			}
			sink.Note("%s exited (%s); restarting%s", s.Name, s.LastExit, wait)
		case supervise.StateFailed:
			sink.Note("%s FAILED: it kept dying (%s); not restarting it. See `lucidctl logs %s`", s.Name, s.LastExit, s.Name)
		case supervise.StateStopped:
			if _, ok := was[s.Name]; ok {
				sink.Note("%s stopped", s.Name)
			}
		}
	}
}

// startDetached starts the supervisor in the background and waits until the
// services are ready, one has failed, or the wait times out.
func startDetached(ctx context.Context, opts *UpOptions, l layout, p *plan) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	consul := p.consul
	if consul == "" {
		consul = "off"
	}
	args := []string{"up", "--supervisor", "--detach", "--lucid", p.lucid, "--consul", consul,
		"--port-offset", strconv.Itoa(p.portOffset)}
	if !p.mtls {
		args = append(args, "--no-mtls")
	}
	if opts.Env.ConfigExplicit() {
		cfgPath, err := filepath.Abs(opts.Env.ConfigPath)
		if err != nil {
			return err
		}
		args = append(args, "--config", cfgPath)
	}
	if opts.Env.Verbose {
		args = append(args, "--verbose")
	}
	args = append(args, opts.Services...)

	if err := l.makePrivate(); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.supervisorLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	// This process writes nothing to the log: the supervisor writes through
	// its own descriptor, so closing this one loses nothing.
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(self, args...)
	cmd.Env = os.Environ() // the supervisor reads the env file itself
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detachAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the background supervisor: %w", err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	fmt.Fprintf(opts.Env.IO.ErrOut, "supervisor started in the background (pid %d); waiting for %s ...\n", pid, strings.Join(p.names(), ", "))

	deadline := time.After(opts.WaitTimeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// Only the wait ends: the supervisor is in the background.
			fmt.Fprintln(opts.Env.IO.ErrOut, "the stack keeps starting in the background; `lucidctl status"+offsetFlag(p.portOffset)+
				"` shows it, `lucidctl down"+offsetFlag(p.portOffset)+"` stops it")
			return ctx.Err()
		case <-exited:
			return cli.WithHint(fmt.Errorf("the background supervisor exited during start"), "see "+l.supervisorLog())
		case <-deadline:
			st, _ := readState(l)
			printTable(opts.Env, st)
			return cli.WithHint(fmt.Errorf("services not ready after %s; the stack keeps running", opts.WaitTimeout),
				"`lucidctl logs"+offsetFlag(p.portOffset)+" <service>` shows why; `lucidctl down"+offsetFlag(p.portOffset)+"` stops it")
		case <-tick.C:
		}
		st, err := readState(l)
		if err != nil || st.SupervisorPID != pid {
			continue
		}
		ready, failed := 0, []string{}
		for _, s := range st.Services {
			switch s.State {
			case supervise.StateReady:
				ready++
			case supervise.StateFailed:
				failed = append(failed, s.Name)
			}
		}
		if len(failed) > 0 {
			printTable(opts.Env, st)
			return cli.WithHint(fmt.Errorf("%s failed to start; the rest keep running", strings.Join(failed, ", ")),
				"`lucidctl logs"+offsetFlag(p.portOffset)+" "+failed[0]+"` shows why; `lucidctl down"+offsetFlag(p.portOffset)+"` stops the stack")
		}
		if ready == len(st.Services) && ready > 0 {
			printTable(opts.Env, st)
			return nil
		}
	}
}

func errAlreadyRunning(pid, offset int) error {
	msg := "the local stack is already running"
	if offset != 0 {
		msg = fmt.Sprintf("the local stack at port offset %d is already running", offset)
	}
	if pid > 0 {
		msg += fmt.Sprintf(" (supervisor pid %d)", pid)
	}
	return cli.WithHint(errors.New(msg), "`lucidctl status"+offsetFlag(offset)+"` shows it; `lucidctl down"+offsetFlag(offset)+
		"` stops it; `lucidctl up --port-offset N` runs another beside it")
}

// offsetFlag is the --port-offset that addresses the stack at offset in a
// hint, or "" for offset 0.
func offsetFlag(offset int) string {
	if offset == 0 {
		return ""
	}
	return " --port-offset " + strconv.Itoa(offset)
}

// errNotRunning reports that there is no local stack to act on.
var errNotRunning = errors.New("the local stack is not running")
