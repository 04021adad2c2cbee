package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// voterRequestTimeout bounds one request to the voter API: adding a voter
// waits for a block to seal its key, then for the cluster to commit the
// new configuration, which the new voter must have caught up to.
const voterRequestTimeout = 3 * time.Minute

// clusterRun is the cluster of lucid.yaml that a deploy's targets belong
// to: every host of it, connected to read it (those of the deploy through
// the deploy's connections, the others through connections of its own),
// and the decisions taken before the first host changes.
type clusterRun struct {
	env  *cli.Env
	name string
	// hosts are the cluster's hosts in lucid.yaml's order.
	hosts   []string
	targets map[string]projectconfig.Target
	// configs are the hosts connected; why says why a host is not.
	configs map[string]deploy.Config
	why     map[string]string
	// opened are the connections the run opened itself.
	opened []*sshx.Client
	token  string
	// envs are the rendered env files, before any host's own values.
	envs map[string][]byte
	// bootstrap is the host whose engine starts the cluster, if any.
	bootstrap string
	rep       deploy.Reporter
	m         *membership

	credsOnce sync.Once
	creds     *hostservices.Credentials
	credsErr  error
}

// clusterOf is the one cluster of lucid.yaml that targets belong to, and
// its name; "" when none does.
func clusterOf(cfg *projectconfig.Config, targets []string) (string, projectconfig.Cluster, error) {
	var name string
	var cl projectconfig.Cluster
	for _, t := range targets {
		n, c, ok := cfg.ClusterOf(t)
		switch {
		case !ok:
		case name == "":
			name, cl = n, c
		case n != name:
			return "", cl, cli.Usage(fmt.Errorf("the targets named belong to two clusters, %s and %s: deploy one at a time", name, n))
		}
	}
	return name, cl, nil
}

// checkRemoveVoters refuses a --remove-voter that names a host of the
// cluster (a host leaves by being taken out of lucid.yaml's cluster, not
// by a flag that its next deploy would undo), or that has no cluster to
// act on.
func checkRemoveVoters(ids []string, cluster string, cl projectconfig.Cluster) error {
	if len(ids) == 0 {
		return nil
	}
	if cluster == "" {
		return cli.Usage(errors.New("--remove-voter: no target named is a host of a cluster of lucid.yaml"))
	}
	for _, id := range ids {
		if slices.Contains(cl.Hosts, id) {
			return cli.Usage(fmt.Errorf("--remove-voter %s: %s is a host of cluster %s in lucid.yaml; take it out of the cluster's hosts first, then remove its voter", id, id, cluster))
		}
	}
	return nil
}

// newClusterRun connects to the hosts of cluster name that the deploy
// does not (run holds the deploy's connected hosts, skipped why the
// others of the deploy are not), to read them; one that cannot be reached
// is read as unknown.
func newClusterRun(ctx context.Context, opts *Options, cfg *projectconfig.Config, name string, cl projectconfig.Cluster, run map[string]deploy.Config, skipped map[string]string, token string, envs map[string][]byte, rep deploy.Reporter) (*clusterRun, error) {
	cr := &clusterRun{env: opts.Env, name: name, hosts: cl.Hosts, targets: map[string]projectconfig.Target{}, configs: map[string]deploy.Config{}, why: map[string]string{}, token: token, envs: envs, rep: rep}
	for _, h := range cl.Hosts {
		t, err := cfg.Target(h)
		if err != nil {
			return nil, cli.Usage(err)
		}
		cr.targets[h] = t
		if c, ok := run[h]; ok {
			cr.configs[h] = c
			continue
		}
		if why, ok := skipped[h]; ok {
			cr.why[h] = why
			continue
		}
		c, err := opts.SSH.Dial(ctx, opts.Env, t)
		if err != nil {
			cr.why[h] = "not reached: " + firstLine(err.Error())
			rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepConnect, Status: deploy.EventWarn,
				Message: fmt.Sprintf("a host of cluster %s, not deployed now, not reached to read it: %s", name, firstLine(err.Error()))})
			continue
		}
		cr.opened = append(cr.opened, c)
		cr.configs[h] = deploy.Config{Name: h, SSH: c, Dir: t.Dir, Project: t.Project, DockerSocket: opts.SSH.dockerSocket, Reporter: rep}
	}
	cr.m = &membership{cluster: name, view: cr.read, engine: cr.engine, voters: cr.voterAPI, audit: cr.audit, rep: rep,
		raftAddr: func(h string) string {
			return net.JoinHostPort(cr.role(h).Address, strconv.Itoa(deployfiles.ClusterPorts.Raft))
		}}
	return cr, nil
}

// close closes the connections the run opened.
func (cr *clusterRun) close() {
	for _, c := range cr.opened {
		c.Close()
	}
}

// has says whether target is a host of the cluster.
func (cr *clusterRun) has(target string) bool { return slices.Contains(cr.hosts, target) }

// read reads every connected host of the cluster at once.
func (cr *clusterRun) read(ctx context.Context) *clusterView {
	var configs []deploy.Config
	for _, h := range cr.hosts {
		if c, ok := cr.configs[h]; ok {
			configs = append(configs, c)
		}
	}
	got, gotErrs := deploy.StatusOf(ctx, configs, deploy.StatusOptions{OperatorToken: cr.token})
	statuses, errs := make([]*deploy.HostStatus, len(cr.hosts)), make([]error, len(cr.hosts))
	j := 0
	for i, h := range cr.hosts {
		if _, ok := cr.configs[h]; !ok {
			errs[i] = errors.New(cr.why[h])
			continue
		}
		statuses[i], errs[i] = got[j], gotErrs[j]
		j++
	}
	return newClusterView(cr.name, cr.hosts, statuses, errs)
}

// role is host h's part in the cluster, which its env files say.
func (cr *clusterRun) role(h string) deployfiles.HostRole {
	r := deployfiles.HostRole{Name: h, Address: cr.targets[h].ClusterAddr(), Bootstrap: h == cr.bootstrap}
	for _, o := range cr.hosts {
		if o != h {
			r.Peers = append(r.Peers, cr.targets[o].ClusterAddr())
		}
	}
	return r
}

// envFor are host h's env files: the rendered ones with its own values,
// its services' operator credentials bound to it.
func (cr *clusterRun) envFor(h string) (map[string][]byte, error) {
	files, err := deployfiles.ForHost(cr.envs, cr.role(h))
	if err != nil {
		return nil, fmt.Errorf("%s: the env files of cluster %s's host: %w", h, cr.name, err)
	}
	return bindOperator(cr.env, files, cr.token, h)
}

// plan reads the cluster before any host changes: it refuses hosts of
// order (the hosts to deploy) whose engine holds a chain that is not the
// cluster's, decides whether the first of them starts the cluster, and
// returns order with the hosts to be added first (each joins the cluster
// those before it form) and the voters after.
func (cr *clusterRun) plan(ctx context.Context, order []string) ([]string, error) {
	v := cr.read(ctx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var joiners, voters []string
	if slices.Contains(order, v.grows) {
		// The single Pi of before goes first and starts the cluster under
		// its target's name, keeping its chain; the others join it.
		cr.bootstrap = v.grows
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: v.grows, Step: deploy.StepBootstrap, Status: deploy.EventInfo,
			Message: fmt.Sprintf("%s's engine (node %s) holds a chain of its own: it starts cluster %s as node %s, keeping its chain, and the others join it as they are deployed", v.grows, v.voters[0].ID, cr.name, v.grows)})
		// The others' part is decided at their turn, on a read made after
		// it has become the cluster's first host.
		others := slices.DeleteFunc(slices.Clone(order), func(h string) bool { return h == v.grows })
		return append([]string{v.grows}, others...), nil
	}
	for _, h := range order {
		join, err := needsJoin(v, h)
		if err != nil {
			cr.rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepJoin, Status: deploy.EventFail, Message: err.Error()})
			return nil, err
		}
		if join || len(v.voters) == 0 {
			joiners = append(joiners, h)
		} else {
			voters = append(voters, h)
		}
	}
	order = slices.Concat(joiners, voters)
	if len(v.voters) > 0 || len(order) == 0 {
		return order, nil
	}
	first := order[0]
	boot, err := decideBootstrap(v, first)
	if err != nil {
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: first, Step: deploy.StepBootstrap, Status: deploy.EventFail, Message: err.Error()})
		return nil, err
	}
	if boot {
		cr.bootstrap = first
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: first, Step: deploy.StepBootstrap, Status: deploy.EventInfo,
			Message: fmt.Sprintf("no host of cluster %s holds a Raft configuration: %s's engine starts the cluster, and the others join it as they are deployed", cr.name, first)})
	}
	return order, nil
}

// credentials are the operator's, which adding or removing a voter takes.
func (cr *clusterRun) credentials() (*hostservices.Credentials, error) {
	cr.credsOnce.Do(func() { cr.creds, cr.credsErr = hostservices.ReadCredentials(cr.env, "") })
	return cr.creds, cr.credsErr
}

// readyToJoin refuses, before host h changes, a join that cannot be made:
// without the operator token, or without a leader among the hosts read.
func (cr *clusterRun) readyToJoin(v *clusterView, h string) error {
	if _, err := cr.credentials(); err != nil {
		return cli.WithHint(fmt.Errorf("%s must join cluster %s as a voter, which takes the operator token: %w; nothing was changed on %s", h, cr.name, err, h),
			"set LUCID_OPERATOR_TOKEN in the environment, or keep it in the operator's env file (local.env_file of lucid.yaml), as `lucidctl render` writes it")
	}
	if err := quorumNow(v); err != nil {
		return cli.WithHint(fmt.Errorf("%s cannot join: %w; nothing was changed on %s%w", h, err, h, errNotNow),
			fmt.Sprintf("repair the voters first (lucidctl status --target %s)", cr.name))
	}
	if v.leaderTarget == "" {
		return cli.WithHint(fmt.Errorf("%s must join cluster %s as a voter, through its leader, but %s; nothing was changed on %s%w", h, cr.name, noLeader(v), h, errNotNow),
			fmt.Sprintf("lucidctl status --target %s shows the cluster", cr.name))
	}
	if _, ok := cr.configs[v.leaderTarget]; !ok {
		return fmt.Errorf("%s must join cluster %s through its leader %s, which is not reached (%s); nothing was changed on %s", h, cr.name, v.leaderTarget, cr.why[v.leaderTarget], h)
	}
	return nil
}

// errNotNow marks a join refused for the cluster's state of the moment
// (no quorum, no leader among the hosts read), which an election ends. It
// adds nothing to the message.
var errNotNow = notNow{}

type notNow struct{}

func (notNow) Error() string { return "" }

// awaitJoinable is readyToJoin, read again a poll apart, up to
// joinAttempts times, while it refuses for the cluster's state of the
// moment: just after a join, or on busy cores, an election can leave the
// cluster without a leader or a quorum for a few seconds, and a deploy
// refused for that would have gone through a moment later. It returns
// the cluster as last read.
func (cr *clusterRun) awaitJoinable(ctx context.Context, v *clusterView, h string) (*clusterView, error) {
	for attempt := 1; ; attempt++ {
		err := cr.readyToJoin(v, h)
		if err == nil || !errors.Is(err, errNotNow) || attempt == joinAttempts {
			return v, err
		}
		if werr := cr.m.wait(ctx); werr != nil {
			return v, errors.Join(err, werr)
		}
		v = cr.m.view(ctx)
	}
}

// engine reads the consensus status of target's engine.
func (cr *clusterRun) engine(ctx context.Context, target string) (*engineapi.ConsensusStatus, error) {
	c, ok := cr.configs[target]
	if !ok {
		return nil, fmt.Errorf("%s is not reached: %s", target, cr.why[target])
	}
	d, err := deploy.New(c)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Consensus(ctx, deploy.StatusOptions{OperatorToken: cr.token})
}

// voterAPI reaches the voter API of target's engine as `lucidctl
// maintenance voters` does: through the host's connection, on its
// loopback, verified by the mesh's certificates, with the operator's
// credential for that host's engine.
func (cr *clusterRun) voterAPI(ctx context.Context, target string) (voterAPI, error) {
	c, ok := cr.configs[target]
	if !ok {
		return nil, fmt.Errorf("%s is not reached: %s", target, cr.why[target])
	}
	creds, err := cr.credentials()
	if err != nil {
		return nil, err
	}
	d, err := deploy.New(c)
	if err != nil {
		return nil, err
	}
	offset, err := d.PortOffset(ctx)
	_ = d.Close() // a read's client
	if err != nil {
		return nil, fmt.Errorf("%s: %w", target, err)
	}
	return &sessionVoters{s: &hostservices.Session{Host: target, Dial: c.SSH.DialTCP, Offset: offset, Creds: creds, Say: func(string, ...any) {}, Deployed: hostservices.DeployedOf(c)}}, nil
}

// audit records a voter change made through target in its audit trail,
// as a maintenance action.
func (cr *clusterRun) audit(ctx context.Context, target string, args []string, opErr error) error {
	d, err := deploy.New(cr.configs[target])
	if err != nil {
		return err
	}
	defer d.Close()
	e := deploy.AuditEntry{Action: deploy.AuditMaintenance, Args: args}
	if opErr != nil {
		e.Error = opErr.Error()
	}
	return d.Audit(ctx, e)
}

// sessionVoters is the voter API through a hostservices session.
type sessionVoters struct{ s *hostservices.Session }

var _ voterAPI = (*sessionVoters)(nil)

func (v *sessionVoters) AddVoter(ctx context.Context, req engineapi.AddVoterRequest) error {
	return v.s.Classify(ctx, v.s.AddVoter(ctx, voterRequestTimeout, req))
}

func (v *sessionVoters) RemoveVoter(ctx context.Context, id, key string) error {
	_, err := v.s.RemoveVoter(ctx, voterRequestTimeout, id, key)
	return v.s.Classify(ctx, err)
}

func (v *sessionVoters) Validators(ctx context.Context) ([]string, error) {
	eng, err := v.s.Engine(ctx, voterRequestTimeout)
	if err != nil {
		return nil, v.s.Classify(ctx, err)
	}
	info, err := eng.Chain(ctx)
	if err != nil {
		return nil, v.s.Classify(ctx, err)
	}
	return info.Validators, nil
}

func (v *sessionVoters) ProbeRaft(ctx context.Context, addr string) error {
	return v.s.Classify(ctx, v.s.ProbeRaft(ctx, addr))
}

func (v *sessionVoters) Close() { v.s.Close() }

// deployJoining runs deployHost, host target's deploy, with its engine's
// join beside it (membership.join), then waits until healthTimeout for
// the leader's configuration to hold it as a healthy voter. When the
// deploy fails, why the join failed (if it did) comes with its error: an
// engine that was never added knows no leader, and fails its gate.
//
// The join starts once up is closed (at once when up is nil): when the
// deploy has passed its quorum check under the host's lock and its
// compose up follows. Started earlier, it could add an engine a failed
// deploy of before left running, and the quorum check would then count
// a voter that this deploy is about to take down.
func (m *membership) deployJoining(ctx context.Context, target string, healthTimeout time.Duration, up <-chan struct{}, deployHost func(context.Context) (*deploy.Result, error)) (*deploy.Result, error) {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	joined, deployed := make(chan error, 1), make(chan struct{})
	go func() {
		if up != nil {
			select {
			case <-up:
			case <-deployed: // done without a compose up of its own
			case <-jctx.Done():
				joined <- jctx.Err()
				return
			}
		}
		joined <- m.join(jctx, target)
	}()
	res, err := deployHost(ctx)
	if err != nil {
		cancel()
		jerr := <-joined
		// An AddVoter that failed, or was given up when the deploy failed
		// first, may have gone through all the same (the leader carries
		// out what it has begun): one read says.
		added := jerr == nil || ctx.Err() == nil && m.view(ctx).voter(target) != nil
		switch {
		case !added && errors.Is(jerr, context.Canceled) && ctx.Err() == nil:
			return nil, err // the deploy failed before the engine was added
		case added:
			return nil, cli.WithHint(fmt.Errorf("%w (%s's engine was added to cluster %s as a voter, and stays one)", err, target, m.cluster),
				fmt.Sprintf("repair %s and deploy it again; or take it out of the cluster's hosts in lucid.yaml and remove it with --remove-voter %s", target, target))
		}
		m.event(target, deploy.StepJoin, deploy.EventFail, jerr.Error())
		return nil, fmt.Errorf("%w; and its engine was not added to the cluster, so it knew no leader: %w", err, jerr)
	}
	close(deployed)
	deadline := time.Now().Add(healthTimeout)
	jerr := <-joined
	if jerr != nil {
		// A request that gave up may still have added it: one read says.
		m.event(target, deploy.StepJoin, deploy.EventWarn, jerr.Error())
		deadline = time.Now()
	}
	if err := m.confirmJoined(ctx, target, deadline); err != nil {
		if jerr != nil {
			err = fmt.Errorf("%w: %w", err, jerr)
		}
		return res, err
	}
	return res, nil
}

// dryRunSays says, in a dry run, what the cluster's deploy would do to
// host h.
func (cr *clusterRun) dryRunSays(v *clusterView, h string, join bool) {
	switch {
	case h == cr.bootstrap:
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepBootstrap, Status: deploy.EventInfo, Message: "would start cluster " + cr.name})
	case v.inPlace(h):
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepJoin, Status: deploy.EventInfo, Message: fmt.Sprintf("would be deployed in place, keeping cluster %s's chain (its release was rendered before per-host operator credentials)", cr.name)})
	case join && v.leaderTarget != "":
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepJoin, Status: deploy.EventInfo, Message: fmt.Sprintf("would join cluster %s as a voter, through the leader %s", cr.name, v.leaderTarget)})
	case join || len(v.voters) == 0:
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: h, Step: deploy.StepJoin, Status: deploy.EventInfo, Message: fmt.Sprintf("would join cluster %s as a voter once its first host has started it", cr.name)})
	}
}

// clusterOrder puts the cluster's hosts among live (indexes of targets) in
// the order plan gives them, in the places they held: the other targets
// keep theirs.
func clusterOrder(ctx context.Context, cr *clusterRun, targets []string, live []int) ([]int, error) {
	var names []string
	var slots []int
	index := map[string]int{}
	for k, i := range live {
		if cr.has(targets[i]) {
			names = append(names, targets[i])
			slots = append(slots, k)
			index[targets[i]] = i
		}
	}
	ordered, err := cr.plan(ctx, names)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(live)
	for k, name := range ordered {
		out[slots[k]] = index[name]
	}
	return out, nil
}

// clusterTurn is one cluster host's turn in a deploy, decided on a read
// of the cluster just before the host changes.
type clusterTurn struct {
	cr   *clusterRun
	name string
	view *clusterView
	// join: its engine is added to the cluster as a voter.
	join bool
	dry  bool
	// envs are its env files.
	envs map[string][]byte
	// up is closed by upNext, when its compose up follows (a join waits
	// for it).
	up     chan struct{}
	upOnce sync.Once
}

// upNext says that the host's compose up follows: its quorum check under
// the lock has passed.
func (t *clusterTurn) upNext() { t.upOnce.Do(func() { close(t.up) }) }

// turn reads the cluster before host name changes and decides its part.
func (cr *clusterRun) turn(ctx context.Context, name string, dry bool) (*clusterTurn, error) {
	v := cr.read(ctx)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fail := func(err error) (*clusterTurn, error) {
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: name, Step: deploy.StepJoin, Status: deploy.EventFail, Message: err.Error()})
		return nil, err
	}
	if dry && v.grows != "" && name != v.grows && v.grows == cr.bootstrap {
		// A dry run changes nothing: the single Pi of before is still one.
		envs, err := cr.envFor(name)
		if err != nil {
			return nil, err
		}
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: name, Step: deploy.StepJoin, Status: deploy.EventInfo,
			Message: fmt.Sprintf("would join cluster %s as a voter once %s has started it", cr.name, v.grows)})
		return &clusterTurn{cr: cr, name: name, view: v, dry: true, envs: envs}, nil
	}
	join, err := needsJoin(v, name)
	if err != nil {
		return fail(err)
	}
	if !dry && len(v.voters) == 0 && name != cr.bootstrap && !v.inPlace(name) {
		// Its engine would wait for a leader that no host provides.
		err := fmt.Errorf("cluster %s holds no Raft configuration yet, and %s is not the host that starts it; nothing was changed on %s", cr.name, name, name)
		if stale := v.stale(); len(stale) > 0 {
			err = cli.WithHint(fmt.Errorf("no host of cluster %s could be read for its Raft configuration, and %s is not one deployed before; nothing was changed on %s", cr.name, name, name),
				fmt.Sprintf("%s run releases rendered before per-host operator credentials, which refuse lucidctl's reads: deploy them first (lucidctl deploy %s), then %s", strings.Join(stale, ", "), strings.Join(stale, " "), name))
		}
		return fail(err)
	}
	envs, err := cr.envFor(name)
	if err != nil {
		return nil, err
	}
	t := &clusterTurn{cr: cr, name: name, view: v, join: join, dry: dry, envs: envs, up: make(chan struct{})}
	switch {
	case dry:
		cr.dryRunSays(v, name, join)
	case join:
		if t.view, err = cr.awaitJoinable(ctx, v, name); err != nil {
			return fail(err)
		}
		v = t.view
		cr.rep.Event(deploy.Event{Time: time.Now(), Target: name, Step: deploy.StepJoin, Status: deploy.EventInfo,
			Message: fmt.Sprintf("not a voter of cluster %s: its engine is added through the leader %s once the quorum check under its lock has passed and this release's engine answers", cr.name, v.leaderTarget)})
	}
	return t, nil
}

// group is the quorum check's read of the cluster before the host's
// lock: the turn's own.
func (t *clusterTurn) group(context.Context) []*deploy.HostStatus { return t.view.read() }

// reread is the quorum check's read under the host's lock: the cluster
// read again, as it is now. The turn's read is from before the upload,
// and before another operator took a host's lock.
func (t *clusterTurn) reread(ctx context.Context) []*deploy.HostStatus { return t.cr.read(ctx).read() }

// stillStarts confirms, under the lock of the host that starts the
// cluster and right before its engine does, that no other host holds a
// chain or is being deployed by another operator: the plan's read is from
// before the upload, and two operators' first deploys may each have
// chosen a host of their own to start it. Each reads the others only
// once it holds its own host's lock, so of two such deploys the later
// read sees the other's lock or chain, and that deploy stops.
func (t *clusterTurn) stillStarts(ctx context.Context) error {
	if t.dry || t.name != t.cr.bootstrap || t.view.grows != "" {
		return nil
	}
	v := t.cr.m.view(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	boot, err := decideBootstrap(v, t.name)
	if err == nil && !boot {
		err = cli.WithHint(fmt.Errorf("cluster %s: another host holds a Raft configuration now, started while this deploy uploaded to %s, which would start a second chain beside it; nothing was changed on %s", t.cr.name, t.name, t.name),
			fmt.Sprintf("deploy again: %s then joins the cluster (lucidctl status --target %s shows it)", t.name, t.cr.name))
	}
	if err != nil {
		t.cr.rep.Event(deploy.Event{Time: time.Now(), Target: t.name, Step: deploy.StepBootstrap, Status: deploy.EventFail, Message: err.Error()})
		return err
	}
	return nil
}

// deploy runs the host's deploy with its part in the cluster: a join
// beside it, or the bootstrap's confirmation after it.
func (t *clusterTurn) deploy(ctx context.Context, healthTimeout time.Duration, deployHost func(context.Context) (*deploy.Result, error)) (*deploy.Result, error) {
	switch {
	case t.dry:
	case t.join:
		return t.cr.m.deployJoining(ctx, t.name, healthTimeout, t.up, deployHost)
	case t.name == t.cr.bootstrap:
		res, err := deployHost(ctx)
		if err == nil {
			t.cr.m.confirmBootstrap(ctx, t.name)
		}
		return res, err
	}
	return deployHost(ctx)
}
