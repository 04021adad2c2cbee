// Package deploy implements `lucidctl deploy`, `lucidctl rollback` and
// `lucidctl releases`: putting what render and build make on the targets of
// lucid.yaml over SSH, and moving between releases there.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/quorum"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/imagebuild"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// Connection flags every command here shares.
type sshFlags struct {
	cli.SSHFlags
	dockerSocket string
}

func (f *sshFlags) add(cmd *cobra.Command) {
	f.Add(cmd.Flags())
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
	// Hosts keeps only these of the named targets and groups' members.
	Hosts []string
	// SkipUnreachable goes on with the hosts that answer.
	SkipUnreachable bool
	// Rotate names the data-bound secrets the release may replace on
	// hosts that hold others.
	Rotate []string
	// ForceQuorum takes a voter down even when its Raft cluster loses its
	// quorum without it.
	ForceQuorum bool
	// RemoveVoters names voters of a cluster's Raft configuration that are
	// no host of the cluster in lucid.yaml, to remove (with their
	// validator keys) before any host changes.
	RemoveVoters []string
}

// NewCmds returns deploy, rollback and releases.
func NewCmds(env *cli.Env) []*cobra.Command {
	return []*cobra.Command{newDeployCmd(env), newRollbackCmd(env), newReleasesCmd(env)}
}

func newDeployCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:               "deploy [TARGET|GROUP...]",
		ValidArgsFunction: env.CompleteTargetArgs(0),
		Args:              cli.MinArgs(0),
		Short:             "Deploy the rendered files and the images to targets over SSH",
		Long: `Deploy to each target (or each target of a group) of lucid.yaml, one host at a
time, stopping at the first that fails. Without an argument, deploy to
lucid.yaml's target when it has exactly one; with several, name one.

With several hosts the first is the canary: when it fails, the others are not
touched; when it passes, "canary pi1 ok; deploying the other 2" and the rest
follow, still one at a time. --hosts keeps only some of the hosts named;
--skip-unreachable goes on without the hosts that cannot be reached (named on
stderr).

  1. check the rendered compose and env files (as lucidctl validate does);
  2. connect to every host over SSH (known_hosts verified), so that a wrong key
     or an unknown host stops the deploy before anything is built or changed;
  3. compare the secrets the release carries with each host's current
     release's, and refuse to replace one its data is bound to (ENCRYPTION_KEY,
     JWT_SECRET_KEY, LUCID_MESH_TOKEN, CONSUL_HTTP_TOKEN, LUCID_OPERATOR_TOKEN)
     unless --rotate KEY names it (checked again after each host's preflight);
     a rotation from lucidctl secrets rotate keeps the old JWT_SECRET_KEY,
     LUCID_MESH_TOKEN or ENCRYPTION_KEY accepted among the previous values,
     and dropping a previous encryption key needs --rotate
     ENCRYPTION_PREVIOUS_KEYS (only once a compaction re-encrypted its records);
  4. build the images (or take --lucid, a ready binary) for lucid.yaml's platforms;
  then, host by host:
  5. check the host: Docker, compose, flock, architecture, free disk, clock,
     the external network;
  6. take the host's deploy lock (renewed while the deploy runs);
  7. send only the image layers the host's Docker lacks, over the same connection;
  8. write a release directory (compose, env 0600, the gateway's route table,
     release.json) under the deploy dir;
  9. compose up, then wait until every service is healthy and the gateway answers;
     when the host's engine is in a Raft cluster of more than one server, also
     until it knows its leader and has applied everything the cluster
     committed, within the same --health-timeout (an engine alone skips this);
  10. on success, point current at the new release and record it live; on
     failure, record it failed, bring the previous release back and show the
     failing services' health output and logs.

When the hosts' engines form one Raft cluster, the group goes one Pi at a
time, each only after the one before is healthy and caught up, and before
taking a voter down (the canary too) the deploy reads every host of the
deploy as lucidctl status --target does: it refuses, naming the unhealthy
voters and changing nothing, when the other healthy voters would be fewer
than a majority (with three voters: one other already down). A voter no host
of the deploy answered as counts as down, so deploy a cluster member with its
whole group. Repair the voters named, or pass --force-quorum to take the host
down anyway (the chain then stops until the quorum is back). Both checks read
the engines with LUCID_OPERATOR_TOKEN (the environment, else the operator's
env file); without it they warn and do not hold the deploy.

A cluster of lucid.yaml (clusters: NAME: hosts: [...]) is one Lucid whose
Raft membership follows that list; deploy it by name, or one of its hosts.
Before anything changes every host of the cluster is read, those not being
deployed too, and then:

  - a host whose engine holds a chain other than the cluster's, or that
    lucid.yaml names differently from its engine's node (a renamed target),
    is refused;
  - when no host holds a Raft configuration, the first host deployed starts
    the cluster (LUCID_RAFT_BOOTSTRAP=true in its env files only); when a
    host cannot be read that is refused, since it may hold the chain;
  - hosts that are not voters yet go first, and each joins as its engine
    comes up: once the leader's host reaches the new engine's Raft address,
    the leader seals its validator key into the chain and adds it as a
    voter; its deploy ends when the leader's configuration holds it as a
    healthy voter that has caught up;
  - a voter that is no host of the cluster is reported and stays (a typo in
    lucid.yaml removes nothing); --remove-voter ID removes it with its
    validator key before any host changes, only while the voters left keep a
    healthy majority, and never the leader.
Cluster deploys read the engines with LUCID_OPERATOR_TOKEN and refuse
without it where a decision needs it; each voter change is recorded in the
leader host's audit trail.

--dry-run prints the plan (files that change, layers to send, services to
restart) and changes nothing. Steps are reported on stderr; --json prints one
JSON event per step on stdout, then a result line. Secrets never appear in
either.`,
		Example: `  lucidctl deploy pi
  lucidctl deploy pi --dry-run
  lucidctl deploy fleet --json
  lucidctl deploy fleet --hosts pi2,pi3 --skip-unreachable
  lucidctl deploy home                       # a cluster: the first deploy starts it, a host added joins it
  lucidctl deploy home --remove-voter pi3    # after taking pi3 out of the cluster's hosts
  lucidctl deploy pi --rotate JWT_SECRET_KEY   # after lucidctl secrets rotate: old tokens work until they retire
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
	f.StringSliceVar(&opts.Hosts, "hosts", nil, "only these of the targets named (comma-separated)")
	f.BoolVar(&opts.SkipUnreachable, "skip-unreachable", false, "go on with the hosts that answer, and name the ones that did not")
	f.StringArrayVar(&opts.Rotate, "rotate", nil, "replace this data-bound secret of the hosts' current release on purpose (repeatable)")
	f.BoolVar(&opts.ForceQuorum, "force-quorum", false, "take a host down even when its engine's Raft cluster loses its quorum without it (the chain stops until the quorum is back)")
	f.StringArrayVar(&opts.RemoveVoters, "remove-voter", nil, "remove this voter, which is no host of the cluster in lucid.yaml, and its validator key (repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("rotate", cobra.FixedCompletions(append(slices.Clone(deployfiles.DataBound), keyring.EncryptionPrevious), cobra.ShellCompDirectiveNoFileComp))
	return cli.SupportsJSON(cmd)
}

// checkRotate refuses a --rotate that names no secret render makes.
func checkRotate(keys []string) error {
	for _, k := range keys {
		if !slices.Contains(deployfiles.Secrets, k) && k != keyring.EncryptionPrevious {
			return cli.Usage(fmt.Errorf("--rotate: %q is not a secret of %s (one of: %s, %s)", k, deployfiles.EnvPath, strings.Join(deployfiles.Secrets, ", "), keyring.EncryptionPrevious))
		}
	}
	return nil
}

func runDeploy(ctx context.Context, opts *Options) error {
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	names := opts.Names
	if len(names) == 0 {
		if names, err = onlyTarget(cfg); err != nil {
			return err
		}
	}
	var targets []string
	for _, n := range names {
		ts, err := cfg.Resolve(n)
		if err != nil {
			return cli.Usage(err)
		}
		targets = append(targets, ts...)
	}
	if targets, err = onlyHosts(targets, opts.Hosts); err != nil {
		return err
	}
	if err := checkRotate(opts.Rotate); err != nil {
		return err
	}
	clusterName, cluster, err := clusterOf(cfg, targets)
	if err != nil {
		return err
	}
	if err := checkRemoveVoters(opts.RemoveVoters, clusterName, cluster); err != nil {
		return err
	}
	files, err := readRendered(ctx, cfg)
	if err != nil {
		return err
	}
	p := newPrinter(opts.Env)
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
	var skipped []string
	skippedWhy := map[string]string{}
	for i, name := range targets {
		t, err := cfg.Target(name)
		if err != nil {
			return cli.Usage(err)
		}
		c, err := opts.SSH.Dial(ctx, opts.Env, t)
		if err != nil {
			p.Event(deploy.Event{Time: time.Now(), Target: name, Step: deploy.StepConnect, Status: deploy.EventFail, Message: err.Error()})
			if opts.SkipUnreachable {
				skipped = append(skipped, name)
				skippedWhy[name] = "not reached: " + firstLine(err.Error())
				continue
			}
			if len(targets) > 1 {
				err = cli.WithHint(err, "--skip-unreachable goes on with the hosts that answer")
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		clients[i] = c
	}
	if len(skipped) == len(targets) {
		return cli.Auth(fmt.Errorf("no host answered: %s", strings.Join(skipped, ", ")))
	}
	if len(skipped) > 0 {
		fmt.Fprintf(opts.Env.IO.ErrOut, "skipped %d unreachable host(s): %s\n", len(skipped), strings.Join(skipped, ", "))
	}
	var live []int // the hosts to deploy to, in order: the first is the canary
	for i := range targets {
		if clients[i] != nil {
			live = append(live, i)
		}
	}
	token := opts.Env.OperatorToken("the engines' consensus status cannot be read")
	configs := make([]deploy.Config, len(targets))
	for _, i := range live {
		t, err := cfg.Target(targets[i])
		if err != nil {
			return cli.Usage(err)
		}
		configs[i] = deploy.Config{
			Name: targets[i], SSH: clients[i], Dir: t.Dir, Project: t.Project, DockerSocket: opts.SSH.dockerSocket,
			ImageName: cfg.Images.Name, Tag: cfg.Images.Tag,
			MinFreeBytes: opts.MinFreeMiB << 20, HealthTimeout: opts.HealthTimeout, LockWait: opts.LockWait,
			ViaRegistry: opts.ViaRegistry, InsecureRegistry: opts.Insecure, OperatorToken: token, Reporter: p,
		}
	}
	// A cluster is read, and its hosts ordered, before the build: a host
	// that cannot join, or a bootstrap that cannot be decided, stops the
	// deploy before anything changes, and each host's secrets are checked
	// in its own env files.
	var cr *clusterRun
	if clusterName != "" {
		run := map[string]deploy.Config{}
		for _, i := range live {
			run[targets[i]] = configs[i]
		}
		if cr, err = newClusterRun(ctx, opts, cfg, clusterName, cluster, run, skippedWhy, token, files.envs, p); err != nil {
			return err
		}
		defer cr.close()
		if live, err = clusterOrder(ctx, cr, targets, live); err != nil {
			return err
		}
	}
	envFor := func(name string) (map[string][]byte, error) {
		if cr != nil && cr.has(name) {
			return cr.envFor(name)
		}
		return bindOperator(opts.Env, files.envs, token, name)
	}
	// Every host's secrets before the build: a fresh clone's new ones are
	// refused at once, and a group's before its canary changes.
	for _, i := range live {
		envs, err := envFor(targets[i])
		if err != nil {
			return err
		}
		if err := checkSecrets(ctx, configs[i], envs, opts.Rotate); err != nil {
			return err
		}
	}
	built, version, err := buildImages(ctx, opts, cfg)
	if err != nil {
		return err
	}
	bundle := deploy.Bundle{Compose: files.compose, EnvFiles: files.envs, Routes: files.routes, TLS: files.tls, MeshCASeed: files.seed, Version: version, Images: built, Rotate: opts.Rotate}

	// Voters that are no host of the cluster: said, and removed when
	// named, before a host changes (fewer voters down make the rolling
	// deploy's quorum easier to keep).
	if cr != nil {
		if err := cr.m.leave(ctx, opts.RemoveVoters, opts.DryRun); err != nil {
			return err
		}
	}

	var done []string
	for n, i := range live {
		name := targets[i]
		// The connections stay open to the end: the quorum check before
		// each host reads the hosts done too.
		readers := deployReaders(i, configs, clients, token)
		hostBundle := bundle
		var member *clusterTurn
		if cr != nil && cr.has(name) {
			if member, err = cr.turn(ctx, name, opts.DryRun); err != nil {
				return withDone(err, done)
			}
			readers.Group = member.group
			hostBundle.EnvFiles = member.envs
		} else if hostBundle.EnvFiles, err = envFor(name); err != nil {
			return withDone(err, done)
		}
		hostConfig := configs[i]
		if !opts.DryRun {
			if err := quorum.Check(ctx, name, readers, p, opts.ForceQuorum); err != nil {
				return withDone(err, done)
			}
			// Once more under the host's lock, right before its engine
			// goes down, with the cluster read again: another voter may
			// have gone meanwhile (the upload takes minutes), or another
			// operator's deploy taken one down or holds its host. The
			// host that starts a cluster checks no other has meanwhile.
			now := readers
			if member != nil {
				now.Group = member.reread
			}
			hostConfig.BeforeUp = func(ctx context.Context) error {
				if err := quorum.Check(ctx, name, now, p, opts.ForceQuorum); err != nil {
					return err
				}
				if member != nil {
					if err := member.stillStarts(ctx); err != nil {
						return err
					}
					member.upNext() // its engine's join may start
				}
				return nil
			}
		}
		deployHost := func(ctx context.Context) (*deploy.Result, error) {
			return deployTo(ctx, hostConfig, hostBundle, opts.DryRun)
		}
		var res *deploy.Result
		if member != nil {
			res, err = member.deploy(ctx, opts.HealthTimeout, deployHost)
		} else {
			res, err = deployHost(ctx)
		}
		if err != nil {
			return groupFailure(err, name, done, targetsOf(targets, live[n+1:])) // it names the target
		}
		// The host runs the new release from here on: a stop now says so,
		// and which hosts were not touched.
		done = append(done, name)
		if err := p.Deployed(res); err != nil {
			return groupFailure(err, name, done, targetsOf(targets, live[n+1:]))
		}
		if res.AuditError != "" {
			return groupFailure(fmt.Errorf("%s: release %s is live, but %s", name, res.Release, res.AuditError), name, done, targetsOf(targets, live[n+1:]))
		}
		if n == 0 && len(live) > 1 && !opts.DryRun {
			fmt.Fprintf(opts.Env.IO.ErrOut, "canary %s ok; deploying the other %d\n", name, len(live)-1)
		}
	}
	return nil
}

// withDone says which hosts already run the new release when a group
// deploy stops.
func withDone(err error, done []string) error {
	if len(done) > 0 {
		return fmt.Errorf("%w (%s already run the new release)", err, strings.Join(done, ", "))
	}
	return err
}

// onlyHosts keeps the targets --hosts names; a name not among them is a
// usage error.
func onlyHosts(targets, hosts []string) ([]string, error) {
	if len(hosts) == 0 {
		return targets, nil
	}
	for _, h := range hosts {
		if !slices.Contains(targets, h) {
			return nil, cli.Usage(fmt.Errorf("--hosts: %q is not among the targets named (%s)", h, strings.Join(targets, ", ")))
		}
	}
	return slices.DeleteFunc(slices.Clone(targets), func(t string) bool { return !slices.Contains(hosts, t) }), nil
}

func targetsOf(targets []string, idx []int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, targets[i])
	}
	return out
}

// groupFailure says where a group deploy that failed on name left the
// others: the canary's failure touched none of them.
func groupFailure(err error, name string, done, untouched []string) error {
	switch {
	case len(untouched) == 0 && len(done) == 0:
		return err
	case len(done) == 0:
		return cli.WithHint(err, fmt.Sprintf("the canary %s failed; the other %d host(s) (%s) were not touched", name, len(untouched), strings.Join(untouched, ", ")))
	case len(untouched) == 0:
		return cli.WithHint(err, fmt.Sprintf("%s run the new release", strings.Join(done, ", ")))
	}
	return cli.WithHint(err, fmt.Sprintf("%s run the new release; %s were not touched", strings.Join(done, ", "), strings.Join(untouched, ", ")))
}

// bindOperator are envs, the rendered env files, as deployed to target:
// each service's operator credential bound to it, so that what the
// operator sends one host's services opens nothing on another host's.
// It needs the operator token when the files hold credentials' hashes.
func bindOperator(env *cli.Env, envs map[string][]byte, token, target string) (map[string][]byte, error) {
	bound, err := deployfiles.BindOperatorCredentials(envs, token, target)
	switch {
	case errors.Is(err, deployfiles.ErrNoOperatorToken):
		file := "the operator's env file"
		if cfg, cerr := env.Config(); cerr == nil {
			file = cfg.Local.EnvFile
		}
		return nil, cli.WithHint(fmt.Errorf("%s: %w; nothing was deployed", target, err),
			"set LUCID_OPERATOR_TOKEN in the environment, or keep it in "+file+" (local.env_file of lucid.yaml), as `lucidctl render` writes it")
	case err != nil:
		return nil, fmt.Errorf("%s: %w; nothing was deployed", target, err)
	}
	return bound, nil
}

// deployTo deploys bundle (or, dry, plans it) to the one target c names.
func deployTo(ctx context.Context, c deploy.Config, bundle deploy.Bundle, dry bool) (*deploy.Result, error) {
	d, err := deploy.New(c)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	if dry {
		return d.DryRun(ctx, bundle)
	}
	return d.Deploy(ctx, bundle)
}

// checkSecrets compares envFiles' secrets with those of the current
// release of the one target c names (deploy.Deployer.CheckSecrets).
func checkSecrets(ctx context.Context, c deploy.Config, envFiles map[string][]byte, rotate []string) error {
	d, err := deploy.New(c)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.CheckSecrets(ctx, envFiles, rotate)
}

// onlyTarget is what `deploy` without an argument deploys to: the one
// target of lucid.yaml. With none, or several, the operator must say.
func onlyTarget(cfg *projectconfig.Config) ([]string, error) {
	targets := slices.Sorted(maps.Keys(cfg.Targets))
	where := cfg.Path
	if where == "" {
		where = "the default configuration (no " + projectconfig.DefaultFile + ")"
	}
	switch len(targets) {
	case 1:
		return targets, nil
	case 0:
		return nil, cli.WithHint(cli.Usage(fmt.Errorf("%s names no target to deploy to", where)),
			"add one under targets: in "+projectconfig.DefaultFile+" (host, user, dir), then run lucidctl deploy TARGET")
	}
	msg := fmt.Sprintf("%s has %d targets; name a target or a group: targets %s", where, len(targets), strings.Join(targets, ", "))
	if len(cfg.Groups) > 0 {
		msg += "; groups " + strings.Join(slices.Sorted(maps.Keys(cfg.Groups)), ", ")
	}
	return nil, cli.Usage(errors.New(msg))
}

// rendered are the files a release is made of.
type rendered struct {
	compose []byte
	envs    map[string][]byte // the containers' env files, by project path
	routes  []byte            // nil unless the compose file mounts a route table
	tls     map[string][]byte // the gateway's TLS files, by name; nil unless the compose file mounts them
	seed    map[string][]byte // a cluster's mesh CA seed, by name; nil unless the compose file mounts it
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
	if r.tls, err = readTLS(cfg, r.compose); err != nil {
		return nil, err
	}
	if r.seed, err = readSeed(cfg, r.compose); err != nil {
		return nil, err
	}
	return &r, nil
}

// readSeed reads the cluster's mesh CA seed the compose file mounts into
// the mesh controller, and refuses a render that does not match
// lucid.yaml: a cluster added or removed since, or a seed missing (every
// host of a cluster must share it, or their engines refuse each other).
// No error holds its content.
func readSeed(cfg *projectconfig.Config, compose []byte) (map[string][]byte, error) {
	renderAgain := func(msg string) error {
		return cli.WithHint(fmt.Errorf("%s; nothing was deployed", msg), "`lucidctl render` writes the files of lucid.yaml's cluster")
	}
	mounted := bytes.Contains(compose, []byte(deployfiles.MeshCASeedMount))
	switch {
	case len(cfg.Clusters) > 0 && !mounted:
		return nil, renderAgain("lucid.yaml has a cluster but the compose file was rendered without one")
	case len(cfg.Clusters) == 0 && mounted:
		return nil, renderAgain("the compose file was rendered for a cluster that lucid.yaml no longer has")
	case !mounted:
		return nil, nil
	}
	seed, err := deployfiles.ReadMeshCASeed(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("the mesh CA seed: %w", err)
	}
	if seed[deployfiles.MeshCAStateName] == nil {
		return nil, renderAgain(deployfiles.MeshCASeedDir + "/" + deployfiles.MeshCAStateName + " is missing")
	}
	return seed, nil
}

// readTLS reads the gateway's TLS files the compose file mounts, and
// refuses them when they are not lucid.yaml's: a certificate renewed, or a
// tls section added or removed, since the last render would otherwise
// ship the old one. No error holds their content.
func readTLS(cfg *projectconfig.Config, compose []byte) (map[string][]byte, error) {
	// What lucid.yaml's tls section says the mount holds, by name.
	want := map[string]string{}
	if t := cfg.TLS; t != nil {
		switch {
		case t.ACME == nil:
			want[deployfiles.TLSCertName], want[deployfiles.TLSKeyName] = t.CertFile, t.KeyFile
		case t.ACME.CARoot != "":
			want[deployfiles.ACMERootName] = t.ACME.CARoot
		}
	}
	renderAgain := func(format string, args ...any) error {
		return cli.WithHint(fmt.Errorf(format+"; nothing was deployed", args...), "`lucidctl render` copies lucid.yaml's tls files for the gateway")
	}
	mounted := bytes.Contains(compose, []byte(":"+deployfiles.TLSMount))
	switch {
	case !mounted && len(want) > 0:
		return nil, renderAgain("lucid.yaml's tls section names files the compose file does not mount into the gateway")
	case !mounted:
		return nil, nil
	case len(want) == 0:
		return nil, renderAgain("the compose file mounts TLS files into the gateway that lucid.yaml's tls section does not name")
	}
	out := map[string][]byte{}
	for name, src := range want {
		rendered := filepath.Join(cfg.Dir, filepath.FromSlash(deployfiles.TLSDir), name)
		got, err := os.ReadFile(rendered)
		if err != nil {
			return nil, renderAgain("%s: %v", rendered, errors.Unwrap(err))
		}
		source, err := os.ReadFile(cfg.Abs(src))
		if err != nil {
			return nil, fmt.Errorf("lucid.yaml's tls section: %w", err)
		}
		if !bytes.Equal(got, source) {
			return nil, renderAgain("%s is not %s (renewed since the last render?)", rendered, cfg.Abs(src))
		}
		out[name] = got
	}
	return out, nil
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

// printer shows the events of deploy and rollback as they come, and then
// each target's result: lines on stderr and a summary on stdout
// (textPrinter), or JSON lines on stdout (jsonPrinter).
type printer interface {
	deploy.Reporter
	// Deployed shows a target's deploy (or dry run) result.
	Deployed(res *deploy.Result) error
	// RolledBack shows a target's rollback result.
	RolledBack(res *deploy.RollbackResult) error
}

var (
	_ printer = (*textPrinter)(nil)
	_ printer = (*jsonPrinter)(nil)
)

func newPrinter(env *cli.Env) printer {
	if env.JSON {
		return &jsonPrinter{enc: json.NewEncoder(env.IO.Out)}
	}
	return &textPrinter{out: env.IO.Out, errOut: env.IO.ErrOut, tty: env.IO.IsStderrTTY()}
}

// textPrinter writes one line per event on stderr (the image transfer as
// one line rewritten in place on a terminal) and the results on stdout.
type textPrinter struct {
	out, errOut io.Writer
	tty         bool
	mu          sync.Mutex
	// midLine is set while a progress line waits for its newline.
	midLine bool
}

// Event prints e on stderr.
func (p *textPrinter) Event(e deploy.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Step == deploy.StepImages && e.Status == deploy.EventInfo {
		if p.tty {
			fmt.Fprintf(p.errOut, "\r%-8s %-9s %s / %s", e.Target, e.Step, mib(e.Bytes), mib(e.Total))
			p.midLine = true
		}
		return
	}
	if p.midLine {
		fmt.Fprintln(p.errOut)
		p.midLine = false
	}
	fmt.Fprintln(p.errOut, iostreams.EventLine(e.Target, string(e.Step), string(e.Status), e.Message))
}

// Deployed prints the plan of a dry run, or what a deploy sent.
func (p *textPrinter) Deployed(res *deploy.Result) error {
	if res.DryRun && res.Plan != nil {
		pl := res.Plan
		_, err := fmt.Fprintf(p.out, "%s: plan for release %s\n  files that change: %s\n  layers to send: %d (%s)\n  services to restart: %s\n",
			res.Target, res.Release, orNone(pl.Files), pl.Layers, mib(pl.Bytes), orNone(pl.Services))
		return err
	}
	_, err := fmt.Fprintf(p.out, "%s: release %s is live (%d layers sent, %s; %d already there)\n", res.Target, res.Release, res.SentLayers, mib(res.SentBytes), res.KeptLayers)
	return err
}

// RolledBack prints which release is live now.
func (p *textPrinter) RolledBack(res *deploy.RollbackResult) error {
	_, err := fmt.Fprintf(p.out, "%s: release %s is live\n", res.Target, res.Release)
	return err
}

// jsonPrinter writes each event, then each result, as one JSON line on
// stdout.
type jsonPrinter struct {
	mu  sync.Mutex
	enc *json.Encoder
	// err is the first failed write, returned with the next result.
	err error
}

// resultLine is the line --json ends each target with, after its events:
// step "result" and the target's result.
type resultLine[R any] struct {
	// Step is always "result", so that a reader tells it from an event.
	Step   string `json:"step"`
	Result R      `json:"result"`
}

// resultStep is resultLine's step.
const resultStep = "result"

// Event writes e as a line. A failed write is returned with the result.
func (p *jsonPrinter) Event(e deploy.Event) { _ = p.line(e) }

// Deployed writes the deploy's result line.
func (p *jsonPrinter) Deployed(res *deploy.Result) error {
	return p.line(resultLine[*deploy.Result]{Step: resultStep, Result: res})
}

// RolledBack writes the rollback's result line.
func (p *jsonPrinter) RolledBack(res *deploy.RollbackResult) error {
	return p.line(resultLine[*deploy.RollbackResult]{Step: resultStep, Result: res})
}

// line writes v, and returns the first write error so far.
func (p *jsonPrinter) line(v any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enc.Encode(v); err != nil && p.err == nil {
		p.err = fmt.Errorf("write --json output: %w", err)
	}
	return p.err
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// RollbackOptions are the inputs of `lucidctl rollback`.
type RollbackOptions struct {
	Env *cli.Env
	// Target is the target of lucid.yaml to roll back.
	Target string
	// Release is the release to bring back; empty means the newest
	// earlier release that went live.
	Release       string
	SSH           sshFlags
	HealthTimeout time.Duration
	LockWait      time.Duration
	// Rotate names data-bound secrets the release may bring other values
	// of (a release from before their rotation).
	Rotate []string
	// ForceQuorum takes a voter down even when its Raft cluster loses its
	// quorum without it.
	ForceQuorum bool
}

func newRollbackCmd(env *cli.Env) *cobra.Command {
	opts := &RollbackOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "rollback TARGET [RELEASE]",
		Short: "Bring back a previous release on a target",
		Long: `Bring back RELEASE (default: the newest earlier release that went live), wait
until every service is healthy, and point current at it: the same steps as a
deploy's last ones, under the same deploy lock. lucidctl releases lists them.

On a host of a cluster, it is refused as a deploy is when the host's engine
is a voter whose cluster would lose its quorum without it (the cluster's other
hosts are read to judge); --force-quorum goes on anyway.

Steps are reported on stderr; --json prints one JSON event per step on stdout,
then a result line.`,
		Example: `  lucidctl rollback pi
  lucidctl rollback pi 20261126T100000Z-v0.3.0`,
		Args: cli.RangeArgs(1, 2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return env.CompleteTargets(cmd, args, toComplete)
			}
			if len(args) == 1 {
				return completeReleases(cmd, env, &opts.SSH, args[0], toComplete)
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Target = args[0]
			if len(args) == 2 {
				opts.Release = args[1]
			}
			return runRollback(cmd.Context(), opts)
		},
	}
	opts.SSH.add(cmd)
	cmd.Flags().DurationVar(&opts.HealthTimeout, "health-timeout", 3*time.Minute, "how long every service gets to become healthy")
	cmd.Flags().DurationVar(&opts.LockWait, "lock-wait", 0, "wait this long for another deploy's lock")
	cmd.Flags().StringSliceVar(&opts.Rotate, "rotate", nil, "data-bound secrets the release may bring back other values of (it holds them from before a rotation)")
	cmd.Flags().BoolVar(&opts.ForceQuorum, "force-quorum", false, "take the host down even when its engine's Raft cluster loses its quorum without it (the chain stops until the quorum is back)")
	return cli.SupportsJSON(cmd)
}

func runRollback(ctx context.Context, opts *RollbackOptions) error {
	t, c, err := opts.SSH.connect(ctx, opts.Env, opts.Target)
	if err != nil {
		return err
	}
	defer c.Close()
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	p := newPrinter(opts.Env)
	// The token reads the engines' consensus status: the quorum check's
	// before the engine goes down, and the caught-up gate's after it is
	// back, which a cluster host's rollback waits on as a deploy does.
	token := opts.Env.OperatorToken("the engines' consensus status cannot be read, so a cluster's quorum is not checked")
	hc := deploy.Config{
		Name: opts.Target, SSH: c, Dir: t.Dir, Project: t.Project, DockerSocket: opts.SSH.dockerSocket,
		HealthTimeout: opts.HealthTimeout, LockWait: opts.LockWait, OperatorToken: token, Reporter: p,
	}
	gate := quorum.NewGate(ctx, quorum.GateOptions{
		Config: cfg, Acting: []deploy.Config{hc}, DockerSocket: opts.SSH.dockerSocket, Force: opts.ForceQuorum, Reporter: p,
		Dial: func(ctx context.Context, t projectconfig.Target) (*sshx.Client, error) {
			return opts.SSH.Dial(ctx, opts.Env, t)
		},
		OperatorToken: token,
	})
	defer gate.Close()
	hc.BeforeUp = gate.Check(opts.Target)
	d, err := deploy.New(hc)
	if err != nil {
		return err
	}
	defer d.Close()
	res, err := d.Rollback(ctx, opts.Release, opts.Rotate)
	if err != nil {
		return err
	}
	if err := p.RolledBack(res); err != nil {
		return err
	}
	if res.AuditError != "" {
		return fmt.Errorf("%s: release %s is live, but %s", res.Target, res.Release, res.AuditError)
	}
	return nil
}

// releaseCompletionTimeout bounds the completion of rollback's RELEASE,
// which asks the host: a shell waits for it.
const releaseCompletionTimeout = 3 * time.Second

// completeReleases completes rollback's RELEASE with the target's
// releases, newest first, each described by its version and status. It
// asks the host over SSH, as rollback would, but never records a new host
// key, and gives up (completing nothing) after releaseCompletionTimeout.
func completeReleases(cmd *cobra.Command, env *cli.Env, f *sshFlags, target, toComplete string) ([]string, cobra.ShellCompDirective) {
	none := cobra.ShellCompDirectiveNoFileComp
	if len(env.TargetNames(cmd)) == 0 {
		return nil, none
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), releaseCompletionTimeout)
	defer cancel()
	safe := *f
	safe.AcceptNew = false
	t, c, err := safe.connect(ctx, env, target)
	if err != nil {
		return nil, none
	}
	defer c.Close()
	d, err := deploy.New(deploy.Config{Name: target, SSH: c, Dir: t.Dir, Project: t.Project, DockerSocket: f.dockerSocket})
	if err != nil {
		return nil, none
	}
	defer d.Close()
	rs, err := d.Releases(ctx)
	if err != nil {
		return nil, none
	}
	var out []string
	for _, r := range rs {
		if strings.HasPrefix(r.ID, toComplete) {
			desc := fmt.Sprintf("%s, %s", r.Version, r.Status)
			if r.Current {
				desc += ", current"
			}
			out = append(out, r.ID+"\t"+desc)
		}
	}
	return out, none | cobra.ShellCompDirectiveKeepOrder
}

// ReleasesOptions are the inputs of `lucidctl releases`.
type ReleasesOptions struct {
	Env *cli.Env
	// Target is the target of lucid.yaml whose releases to list.
	Target string
	SSH    sshFlags
}

func newReleasesCmd(env *cli.Env) *cobra.Command {
	opts := &ReleasesOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "releases TARGET",
		Short: "List the releases on a target",
		Long: `List the releases in the target's deploy directory, newest first, with their
status (deploying, live, failed, replaced, or unknown when the release has no
readable release.json) and which is current.`,
		Example: `  lucidctl releases pi
  lucidctl releases pi --json`,
		Args:              cli.ExactArgs(1),
		ValidArgsFunction: env.CompleteTargetArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Target = args[0]
			return runReleases(cmd.Context(), opts)
		},
	}
	opts.SSH.add(cmd)
	return cli.SupportsJSON(cmd)
}

// releasesOutput is `lucidctl releases --json`.
type releasesOutput struct {
	Target   string          `json:"target"`
	Releases []releaseOutput `json:"releases"`
}

// releaseOutput is one release in releasesOutput.
type releaseOutput struct {
	ID      string               `json:"id"`
	Version string               `json:"version"`
	Created time.Time            `json:"created"`
	By      string               `json:"by"`
	Images  map[string]string    `json:"images"`
	Status  deploy.ReleaseStatus `json:"status"`
	Current bool                 `json:"current"`
}

func runReleases(ctx context.Context, opts *ReleasesOptions) error {
	t, c, err := opts.SSH.connect(ctx, opts.Env, opts.Target)
	if err != nil {
		return err
	}
	defer c.Close()
	d, err := deploy.New(deploy.Config{Name: opts.Target, SSH: c, Dir: t.Dir, Project: t.Project, DockerSocket: opts.SSH.dockerSocket})
	if err != nil {
		return err
	}
	defer d.Close()
	rs, err := d.Releases(ctx)
	if err != nil {
		return err
	}
	if opts.Env.JSON {
		out := releasesOutput{Target: opts.Target, Releases: []releaseOutput{}}
		for _, r := range rs {
			out.Releases = append(out.Releases, releaseOutput{ID: r.ID, Version: r.Version, Created: r.Created, By: r.By, Images: r.Images, Status: r.Status, Current: r.Current})
		}
		return opts.Env.PrintJSON(out)
	}
	tw := tabwriter.NewWriter(opts.Env.IO.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RELEASE\tVERSION\tSTATUS\tCREATED\tBY\t")
	for _, r := range rs {
		mark := ""
		if r.Current {
			mark = "(current)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Version, r.Status, r.Created.Format(time.RFC3339), r.By, mark)
	}
	return tw.Flush()
}

// deployReaders are the quorum check's readers over the deploy's open
// connections: Own reads host i's engine, Group every host still
// connected, in parallel.
func deployReaders(i int, configs []deploy.Config, clients []*sshx.Client, token string) quorum.Readers {
	return quorum.Readers{
		Own: func(ctx context.Context) (*engineapi.ConsensusStatus, error) {
			return quorum.ReadOwn(ctx, configs[i], token)
		},
		Group: func(ctx context.Context) []*deploy.HostStatus {
			var connected []deploy.Config
			for j := range clients {
				if clients[j] != nil {
					connected = append(connected, configs[j])
				}
			}
			return quorum.ReadGroup(ctx, connected, token)
		},
	}
}
