// Package deploy implements `lucidctl deploy`, `lucidctl rollback` and
// `lucidctl releases`: putting what render and build make on the targets of
// lucid.yaml over SSH, and moving between releases there.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// Connection flags every command here shares.
type sshFlags struct {
	cli.SSHFlags
	dockerSocket string
}

func (f *sshFlags) add(cmd *cobra.Command) {
	f.SSHFlags.Add(cmd.Flags())
	cmd.Flags().StringVar(&f.dockerSocket, "docker-socket", "/var/run/docker.sock", "the Docker Engine's socket on the host")
}

// connect looks up the target called name in lucid.yaml and dials it.
func (f *sshFlags) connect(ctx context.Context, env *cli.Env, name string) (projectconfig.Target, *sshx.Client, error) {
	cfg, err := env.Config()
	if err != nil {
		return projectconfig.Target{}, nil, err
	}
	t, err := cfg.Target(name)
	if err != nil {
		return t, nil, cli.Usage(err)
	}
	c, err := f.Dial(ctx, env, t)
	return t, c, err
}

// Options are the inputs of `lucidctl deploy`.
type Options struct {
	Env           *cli.Env
	Names         []string
	SSH           sshFlags
	DryRun        bool
	LockWait      time.Duration
	HealthTimeout time.Duration
	MinFreeMiB    int64
	// Image decides the images' bytes, as for lucidctl build.
	Image       build.ImageFlags
	ViaRegistry string
	Insecure    bool
}

// NewCmds returns deploy, rollback and releases.
func NewCmds(env *cli.Env) []*cobra.Command {
	return []*cobra.Command{newDeployCmd(env), newRollbackCmd(env), newReleasesCmd(env)}
}

func newDeployCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "deploy [TARGET|GROUP...]",
		Args:  cli.MinArgs(0),
		Short: "Deploy the rendered files and the images to targets over SSH",
		Long: `Deploy to each target (or each target of a group) of lucid.yaml, one host at a
time, stopping at the first that fails:

  1. check the rendered compose and env files (as lucidctl validate does);
  2. connect to every host over SSH (known_hosts verified), so that a wrong key
     or an unknown host stops the deploy before anything is built or changed;
  3. build the images (or take --lucid, a ready binary) for lucid.yaml's platforms;
  then, host by host:
  4. check the host: Docker, compose, flock, architecture, free disk, clock,
     the external network;
  5. take the host's deploy lock (renewed while the deploy runs);
  6. send only the image layers the host's Docker lacks, over the same connection;
  7. write a release directory (compose, env 0600, the gateway's route table,
     release.json) under the deploy dir;
  8. compose up, then wait until every service is healthy and the gateway answers;
  9. on failure, bring the previous release back and show the failing services'
     health output and logs; on success, point current at the new release.

--dry-run prints the plan (files that change, layers to send, services to
restart) and changes nothing. Steps are reported on stderr; --json prints one
JSON event per step on stdout. Secrets never appear in either.`,
		Example: `  lucidctl deploy pi
  lucidctl deploy pi --dry-run
  lucidctl deploy fleet --json
  lucidctl deploy pi --accept-new-host-key   # the first time, after checking the fingerprint`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Names = args
			return runDeploy(cmd.Context(), opts)
		},
	}
	opts.SSH.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&opts.DryRun, "dry-run", false, "print what would change, and change nothing")
	f.DurationVar(&opts.LockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	f.DurationVar(&opts.HealthTimeout, "health-timeout", 3*time.Minute, "how long every service gets to become healthy")
	f.Int64Var(&opts.MinFreeMiB, "min-free", 1024, "free disk (MiB) the deploy dir needs")
	opts.Image.Add(f)
	f.StringVar(&opts.ViaRegistry, "via-registry", "", "send the images through this registry (host:port/prefix), which the host pulls from, instead of over SSH")
	f.BoolVar(&opts.Insecure, "insecure-registry", false, "plain HTTP to the --via-registry registry")
	return cli.SupportsJSON(cmd)
}

func runDeploy(ctx context.Context, opts *Options) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	names := opts.Names
	if len(names) == 0 {
		names = []string{"pi"}
	}
	var targets []string
	for _, n := range names {
		ts, err := cfg.Resolve(n)
		if err != nil {
			return cli.Usage(err)
		}
		targets = append(targets, ts...)
	}
	files, err := readRendered(ctx, cfg)
	if err != nil {
		return err
	}
	report := newReporter(opts.Env)
	// Every host before the build: a wrong key or an unknown host key is
	// said at once, not after a build, and a group stops before its first
	// host changes rather than halfway through. Keep-alives hold the
	// connections open while the build and the hosts before run.
	clients := make([]*sshx.Client, len(targets))
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, name := range targets {
		t, _ := cfg.Target(name)
		c, err := opts.SSH.Dial(ctx, opts.Env, t)
		if err != nil {
			report.event(deploy.Event{Time: time.Now(), Target: name, Step: "connect", Status: "fail", Message: err.Error()})
			return fmt.Errorf("%s: %w", name, err)
		}
		clients[i] = c
	}
	built, version, err := buildImages(ctx, opts, cfg)
	if err != nil {
		return err
	}

	for i, name := range targets {
		t, _ := cfg.Target(name)
		res, err := deploy.Deploy(ctx, deploy.Options{
			Name: name, SSH: clients[i], Dir: t.Dir, DockerSocket: opts.SSH.dockerSocket,
			Compose: files.compose, EnvFiles: files.envs, Routes: files.routes, ImageName: cfg.Images.Name, Tag: cfg.Images.Tag, Version: version,
			Images: built, MinFreeBytes: opts.MinFreeMiB << 20, HealthTimeout: opts.HealthTimeout,
			LockWait: opts.LockWait, DryRun: opts.DryRun, Events: report.event,
			ViaRegistry: opts.ViaRegistry, InsecureRegistry: opts.Insecure,
		})
		clients[i].Close()
		clients[i] = nil
		if err != nil {
			return err // it names the target
		}
		report.result(res)
	}
	return nil
}

// rendered are the files a release is made of.
type rendered struct {
	compose []byte
	envs    map[string][]byte // the containers' env files, by project path
	routes  []byte            // nil unless the compose file mounts a route table
}

// readRendered reads the rendered files and the gateway's route table, and
// refuses them when validate finds problems.
func readRendered(ctx context.Context, cfg *projectconfig.Config) (*rendered, error) {
	cp := filepath.Join(cfg.Dir, filepath.FromSlash(deployfiles.ComposePath))
	r := rendered{envs: map[string][]byte{}}
	var err error
	if r.compose, err = os.ReadFile(cp); err != nil {
		return nil, cli.WithHint(fmt.Errorf("compose file: %w", err), "`lucidctl render` writes it")
	}
	// The containers' env files, never the operator's: a release of
	// before per-service files is migrated by deploying a render of now.
	envPaths, err := deployfiles.EnvFilesOf(ctx, cfg.Dir, r.compose)
	if err != nil {
		return nil, cli.WithHint(err, "`lucidctl render` writes the compose file and each service's env file")
	}
	for _, p := range envPaths {
		if r.envs[p], err = os.ReadFile(filepath.Join(cfg.Dir, filepath.FromSlash(p))); err != nil {
			return nil, cli.WithHint(fmt.Errorf("env file: %w", err), "`lucidctl render` writes it")
		}
	}
	problems, err := deployfiles.Validate(ctx, deployfiles.ValidateOptions{ComposeFile: cp, ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag})
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		var lines []string
		for _, p := range problems {
			lines = append(lines, "  "+p.String())
		}
		return nil, cli.Problems(fmt.Errorf("the rendered files have problems; nothing was deployed:\n%s", strings.Join(lines, "\n")))
	}
	// Validate has checked a mounted table; one the compose file does not
	// mount would be ignored on the Pi, which is never what was meant.
	routes, err := deployfiles.ReadRoutes(cfg.Dir)
	switch mounted := bytes.Contains(r.compose, []byte(deployfiles.RoutesMount)); {
	case err != nil:
		return nil, err
	case mounted:
		r.routes = routes // there: validate reports a mounted table that is missing
	case routes != nil:
		return nil, cli.WithHint(fmt.Errorf("%s exists but the compose file does not mount it; nothing was deployed", deployfiles.RoutesPath),
			"`lucidctl render` mounts it into the gateway")
	}
	return &r, nil
}

// buildImages makes the images with lucidctl build's pipeline and image
// flags, so a deployed image is the one build makes, and returns them with
// the version they are labelled with.
func buildImages(ctx context.Context, opts *Options, cfg *projectconfig.Config) ([]imagebuild.Built, string, error) {
	spec, err := opts.Image.Spec(cfg, opts.Env.Getenv)
	if err != nil {
		return nil, "", err
	}
	res, err := imagebuild.Build(ctx, spec)
	if err != nil {
		return nil, "", err
	}
	return res.Images, res.Stamp.Version, nil
}

// reporter prints events: lines on stderr, or JSON lines on stdout.
type reporter struct {
	env *cli.Env
	mu  sync.Mutex
	tty bool
	// midLine is set while a progress line waits for its newline.
	midLine bool
}

func newReporter(env *cli.Env) *reporter {
	return &reporter{env: env, tty: env.IO.IsStderrTTY()}
}

func (r *reporter) event(e deploy.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.env.JSON {
		b, _ := json.Marshal(e)
		fmt.Fprintln(r.env.IO.Out, string(b))
		return
	}
	w := r.env.IO.ErrOut
	if e.Step == "images" && e.Status == "info" {
		if r.tty {
			fmt.Fprintf(w, "\r%-8s %-9s %s / %s", e.Target, e.Step, mib(e.Bytes), mib(e.Total))
			r.midLine = true
		}
		return
	}
	if r.midLine {
		fmt.Fprintln(w)
		r.midLine = false
	}
	fmt.Fprintf(w, "%-8s %-9s %-5s %s\n", e.Target, e.Step, e.Status, e.Message)
}

func (r *reporter) result(res *deploy.Result) {
	if r.env.JSON {
		b, _ := json.Marshal(map[string]any{"step": "result", "result": res})
		fmt.Fprintln(r.env.IO.Out, string(b))
		return
	}
	if res.DryRun {
		p := res.Plan
		fmt.Fprintf(r.env.IO.Out, "%s: plan for release %s\n  files that change: %s\n  layers to send: %d (%s)\n  services to restart: %s\n",
			res.Target, res.Release, orNone(p.Files), p.Layers, mib(p.Bytes), orNone(p.Services))
		return
	}
	fmt.Fprintf(r.env.IO.Out, "%s: release %s is live (%d layers sent, %s; %d already there)\n", res.Target, res.Release, res.SentLayers, mib(res.SentBytes), res.KeptLayers)
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func newRollbackCmd(env *cli.Env) *cobra.Command {
	var f sshFlags
	var healthTimeout, lockWait time.Duration
	cmd := &cobra.Command{
		Use:   "rollback TARGET [RELEASE]",
		Short: "Bring back a previous release on a target",
		Long: `Bring back RELEASE (default: the newest earlier release that went live), wait
until every service is healthy, and point current at it. lucidctl releases
lists them.`,
		Args: cli.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, c, err := f.connect(cmd.Context(), env, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			id := ""
			if len(args) == 2 {
				id = args[1]
			}
			report := newReporter(env)
			got, err := deploy.Rollback(cmd.Context(), deploy.Options{Name: args[0], SSH: c, Dir: t.Dir, DockerSocket: f.dockerSocket, HealthTimeout: healthTimeout, LockWait: lockWait, Events: report.event}, id)
			if err != nil {
				return err
			}
			if env.JSON {
				return env.PrintJSON(map[string]string{"target": args[0], "release": got})
			}
			fmt.Fprintf(env.IO.Out, "%s: release %s is live\n", args[0], got)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().DurationVar(&healthTimeout, "health-timeout", 3*time.Minute, "how long every service gets to become healthy")
	cmd.Flags().DurationVar(&lockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	return cli.SupportsJSON(cmd)
}

func newReleasesCmd(env *cli.Env) *cobra.Command {
	var f sshFlags
	cmd := &cobra.Command{
		Use:   "releases TARGET",
		Short: "List the releases on a target",
		Args:  cli.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, c, err := f.connect(cmd.Context(), env, args[0])
			if err != nil {
				return err
			}
			defer c.Close()
			rs, err := deploy.Releases(cmd.Context(), c, t.Dir)
			if err != nil {
				return err
			}
			if env.JSON {
				if rs == nil {
					rs = []deploy.Release{}
				}
				return env.PrintJSON(map[string]any{"target": args[0], "releases": rs})
			}
			tw := tabwriter.NewWriter(env.IO.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RELEASE\tVERSION\tSTATUS\tCREATED\tBY\t")
			for _, r := range rs {
				mark := ""
				if r.Current {
					mark = "(current)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Version, r.Status, r.Created.Format(time.RFC3339), r.By, mark)
			}
			return tw.Flush()
		},
	}
	f.add(cmd)
	return cli.SupportsJSON(cmd)
}
