package deploy

// A cluster of lucid.yaml (clusters: NAME: hosts: [...]) is one Lucid:
// its hosts' engines are one Raft cluster, and lucid.yaml says who is in
// it. The first deploy bootstraps it on its first host, a host added to
// the list joins as a voter when it is deployed, and a voter that no host
// of the list is stays until the operator names it for removal: a typo in
// lucid.yaml must never take a voter away.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/deploy"
)

// chainState is what a host's engine holds, as far as one read tells.
type chainState int

const (
	// chainUnknown: the host, or its engine, could not be read.
	chainUnknown chainState = iota
	// chainNone: no Raft configuration (a host never deployed, or an
	// engine waiting to be added).
	chainNone
	// chainSome: a Raft configuration.
	chainSome
)

// clusterView is one read of every host of a cluster of lucid.yaml: what
// each host's engine says, and the cluster's Raft configuration.
type clusterView struct {
	name string
	// hosts are the cluster's hosts in lucid.yaml's order.
	hosts []string
	// status is each host read; why says why a host was not.
	status map[string]*deploy.HostStatus
	why    map[string]string
	// voters are the voters of the cluster's Raft configuration: the
	// leader's as deploy.ClusterOf judges it, else that of the one host
	// whose engine holds a configuration of its own (a cluster of one);
	// none when no engine holds one.
	voters []deploy.Voter
	// leaderID is the leader's node id, and leaderTarget the host whose
	// engine answered as it ("" when there is none, or it was not read).
	leaderID, leaderTarget string
	// cluster is deploy.ClusterOf's verdict; nil for a configuration of
	// one server.
	cluster *deploy.Cluster
	// grows is the host whose engine is a single Pi's of before the
	// cluster: a configuration of itself alone, under another node id
	// (lucid-blockchain-engine) than its target's. Started as the host
	// that bootstraps, the engine takes its target's id and cluster
	// address and keeps its chain (the engine's recovery of a one-voter
	// configuration); it must be the first host deployed.
	grows string
	// split says that the hosts' engines hold several chains, which no
	// membership change may merge.
	split string
}

// newClusterView judges one read of the cluster's hosts: statuses[i] is
// hosts[i]'s status, or nil with errs[i] saying why.
func newClusterView(name string, hosts []string, statuses []*deploy.HostStatus, errs []error) *clusterView {
	v := &clusterView{name: name, hosts: hosts, status: map[string]*deploy.HostStatus{}, why: map[string]string{}}
	var read []*deploy.HostStatus
	for i, h := range hosts {
		switch {
		case statuses[i] != nil:
			v.status[h] = statuses[i]
			read = append(read, statuses[i])
		case errs[i] != nil:
			v.why[h] = firstLine(errs[i].Error())
		default:
			v.why[h] = "not read"
		}
	}
	if c := deploy.ClusterOf(read); c != nil {
		v.cluster, v.voters = c, c.Voters
		if c.Leader != nil {
			v.leaderID, v.leaderTarget = c.Leader.ID, c.Leader.Target
		}
		return v
	}
	// No configuration of more than one server: at most one host may hold
	// one of its own, and it is the cluster so far.
	var own []*deploy.HostStatus
	for _, h := range read {
		if len(h.Reports.RaftServers) > 0 {
			own = append(own, h)
		}
	}
	switch len(own) {
	case 0:
	case 1:
		h := own[0]
		r := h.Reports
		for _, s := range r.RaftServers {
			if !s.Voter {
				continue
			}
			vt := deploy.Voter{ID: s.ID, Address: s.Address, Why: "no host read answered as it"}
			if s.ID == r.RaftNodeID {
				vt.Target, vt.State, vt.Why = h.Target, r.RaftRole, ""
				ok, why := deploy.EngineHealth(h)
				vt.Healthy = ok && (r.RaftRole == "leader" || r.RaftRole == "follower")
				switch {
				case !ok:
					vt.Why = why
				case !vt.Healthy:
					vt.Why = "its engine is " + r.RaftRole
				}
			}
			v.voters = append(v.voters, vt)
		}
		if r.RaftRole == "leader" {
			v.leaderID, v.leaderTarget = r.RaftNodeID, h.Target
		}
		if len(r.RaftServers) == 1 && r.RaftServers[0].Voter && r.RaftServers[0].ID == r.RaftNodeID && r.RaftNodeID != h.Target {
			v.grows = h.Target
		}
	default:
		var names []string
		for _, h := range own {
			names = append(names, fmt.Sprintf("%s (node %s)", h.Target, h.Reports.RaftNodeID))
		}
		v.split = fmt.Sprintf("the engines of %s each hold a chain of their own, and a cluster has one", strings.Join(names, ", "))
	}
	return v
}

// voter is the configuration's voter id, nil when it is none.
func (v *clusterView) voter(id string) *deploy.Voter {
	if i := slices.IndexFunc(v.voters, func(x deploy.Voter) bool { return x.ID == id }); i >= 0 {
		return &v.voters[i]
	}
	return nil
}

// strangers are the configuration's voters that are no host of the
// cluster in lucid.yaml.
func (v *clusterView) strangers() []deploy.Voter {
	var out []deploy.Voter
	for _, x := range v.voters {
		if !slices.Contains(v.hosts, x.ID) {
			out = append(out, x)
		}
	}
	return out
}

// read are the statuses read, in lucid.yaml's order.
func (v *clusterView) read() []*deploy.HostStatus {
	var out []*deploy.HostStatus
	for _, h := range v.hosts {
		if st := v.status[h]; st != nil {
			out = append(out, st)
		}
	}
	return out
}

// inPlace says host h runs a release of this cluster's, deployed as host
// h (its engine named after it), whose services refuse the operator's
// credentials because it was rendered before per-host ones: its engine
// cannot be read, but keeps its Raft state, the cluster's. A deploy
// replaces it in place, neither joining it nor starting a chain, and
// binds the credentials to h, after which it can be read. lucidctl never
// falls back to the older credentials to read it.
func (v *clusterView) inPlace(h string) bool {
	st := v.status[h]
	return st != nil && st.StaleCredentials != nil && st.StaleCredentials.EngineNode == h
}

// stale are the hosts whose services refused the operator's credentials
// because their release was rendered before per-host ones.
func (v *clusterView) stale() []string {
	var out []string
	for _, h := range v.hosts {
		if st := v.status[h]; st != nil && st.StaleCredentials != nil {
			out = append(out, h)
		}
	}
	return out
}

// chainOf says whether host h's engine holds a Raft configuration, and
// when that is unknown, why.
func (v *clusterView) chainOf(h string) (chainState, string) {
	st := v.status[h]
	switch {
	case st == nil:
		return chainUnknown, v.why[h]
	case st.Reports.RaftRole != "" && len(st.Reports.RaftServers) > 0:
		return chainSome, ""
	case v.inPlace(h):
		return chainSome, "" // unread, but deployed as a host of this cluster
	case st.Reports.RaftRole != "":
		return chainNone, ""
	case st.Release == nil && st.Unknown[deploy.FigureRelease] == "" && engineMissing(st):
		return chainNone, "" // never deployed
	}
	why := st.Unknown[deploy.FigureRaftRole]
	if why == "" {
		why = "its engine's consensus status was not read"
	}
	return chainUnknown, why
}

// deployedElsewhere says why host h, which holds no chain yet, may be
// about to: another operator's deploy holds its lock (a first deploy,
// still uploading, may be starting the cluster there), or its lock could
// not be read. "" when neither.
func (v *clusterView) deployedElsewhere(h string) string {
	st := v.status[h]
	if st == nil {
		return ""
	}
	if l := st.DeployLock; l != nil && !l.Ours() {
		return "holds no chain yet, but " + l.String() + " holds its deploy lock, and may be starting the cluster there"
	}
	if why := st.Unknown[deploy.FigureDeployLock]; why != "" {
		return "holds no chain yet, but whether another deploy holds its lock was not read: " + why
	}
	return ""
}

func engineMissing(st *deploy.HostStatus) bool {
	return slices.ContainsFunc(st.Services, func(s deploy.ServiceState) bool { return s.Service == "engine" && s.State == "missing" })
}

// errCannotBootstrap marks a refusal to start a new cluster.
var errCannotBootstrap = errors.New("cannot tell whether the cluster already exists")

// decideBootstrap says whether first, the first host of the cluster a
// deploy changes, starts a new Raft cluster (LUCID_RAFT_BOOTSTRAP=true):
// only when no host of the cluster holds a Raft configuration. A host
// that could not be read may hold one, and then nothing may start a
// second chain beside it: the decision is refused. first's own state does
// not matter (an engine that holds a configuration ignores the flag).
func decideBootstrap(v *clusterView, first string) (bool, error) {
	if v.split != "" {
		return false, fmt.Errorf("cluster %s: %s", v.name, v.split)
	}
	if len(v.voters) > 0 || v.inPlace(first) {
		return false, nil
	}
	var unknown []string
	for _, h := range v.hosts {
		if h == first {
			continue
		}
		switch st, why := v.chainOf(h); st {
		case chainSome:
			return false, nil
		case chainUnknown:
			unknown = append(unknown, h+" ("+why+")")
		case chainNone:
			if why := v.deployedElsewhere(h); why != "" {
				unknown = append(unknown, h+" ("+why+")")
			}
		}
	}
	if len(unknown) > 0 {
		hint := fmt.Sprintf("deploy when every host of the cluster answers (lucidctl status --target %s); a host gone for good leaves the cluster's hosts in lucid.yaml first", v.name)
		if stale := v.stale(); len(stale) > 0 {
			// A single Pi's release of before per-host credentials: only
			// a deploy of it alone binds them, and then it can be read.
			hint = fmt.Sprintf("%s run a single Pi's release rendered before per-host operator credentials: take them out of the cluster's hosts in lucid.yaml, deploy each alone (lucidctl deploy HOST), then put them back and deploy the cluster", strings.Join(stale, ", "))
		}
		return false, cli.WithHint(fmt.Errorf("cluster %s: %w: no host read holds a Raft configuration, so %s would start a new chain, but %s could not be read and may already hold the cluster's; nothing was changed",
			v.name, errCannotBootstrap, first, strings.Join(unknown, ", ")), hint)
	}
	return true, nil
}

// needsJoin says whether host h's engine must be added to the cluster as
// a voter: the cluster has a configuration, and h is not a voter of it.
// It refuses a host whose engine holds a configuration that is not the
// cluster's (a chain of its own, which joining would throw away), and one
// whose engine is a node of another name (a target renamed in lucid.yaml,
// which would come back as a node the cluster does not know).
func needsJoin(v *clusterView, h string) (bool, error) {
	if v.split != "" {
		return false, fmt.Errorf("cluster %s: %s", v.name, v.split)
	}
	switch {
	case v.grows == h:
		return false, nil // it starts the cluster, keeping its chain
	case v.grows != "":
		return false, cli.WithHint(fmt.Errorf("%s's engine is still the single Pi's (node %s at %s): %s cannot join it before it becomes the cluster's first host; nothing was changed on %s",
			v.grows, v.voters[0].ID, v.voters[0].Address, h, h), fmt.Sprintf("deploy %s first, or with the others: lucidctl deploy %s", v.grows, v.name))
	}
	if st := v.status[h]; st != nil && st.Reports.RaftRole != "" && len(st.Reports.RaftServers) > 0 {
		r := st.Reports
		switch node := r.RaftNodeID; {
		case node != h && v.voter(node) != nil:
			return false, cli.WithHint(fmt.Errorf("%s's engine is node %s of cluster %s, but lucid.yaml names the host %s: its engine would start again as node %s, which the cluster does not know; nothing was changed on %s", h, node, v.name, h, h, h),
				fmt.Sprintf("name the target %s again in lucid.yaml (a cluster host's engine is named after its target)", node))
		case node != h:
			return false, fmt.Errorf("%s's engine is node %s, with a Raft configuration of its own (%s): as a host of cluster %s it would start again as node %s; nothing was changed on %s", h, node, describeServers(r.RaftServers), v.name, h, h)
		case v.voter(h) == nil:
			return false, fmt.Errorf("%s's engine holds a chain of its own (Raft configuration: %s), not cluster %s's: joining would throw it away, so it is not done; nothing was changed on %s", h, describeServers(r.RaftServers), v.name, h)
		}
	}
	if v.voter(h) != nil {
		// A voter whose card holds no chain is a new card in its place:
		// its engine makes a new validator key, which must be sealed
		// before the engine may lead (join re-adds it, sealing the key).
		// So is one whose key its chain does not hold: a join of before
		// that stopped before the key was sealed.
		st, _ := v.chainOf(h)
		return (st == chainNone && v.status[h] != nil) || keyUnsealed(v.status[h]), nil
	}
	return len(v.voters) > 0, nil
}

func describeServers(ss []engineapi.Server) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ID+" at "+s.Address)
	}
	return strings.Join(out, ", ")
}

// errRemoval marks a removal the deploy refuses.
var errRemoval = errors.New("not removed")

// checkRemoval refuses to remove voter id unless the voters left keep a
// healthy majority (the quorum of lucidctl status's verdict), and never
// removes the leader: the leader cannot remove its own validator key, and
// no leader is chosen by lucidctl.
func checkRemoval(v *clusterView, id string) error {
	// The leader first: a voter that leaves lucid.yaml's hosts is read by
	// no one but named as leader by the others, and the operator must
	// act on its host.
	if id == v.leaderID {
		return cli.WithHint(fmt.Errorf("voter %s leads cluster %s, and a leader cannot remove itself with its validator key: %w", id, v.name, errRemoval),
			fmt.Sprintf("stop %s's engine on its host (docker stop lucid-blockchain-engine): it hands its leadership to another voter as it stops; then deploy again", id))
	}
	if v.leaderID == "" || v.leaderTarget == "" {
		return fmt.Errorf("cluster %s has no leader among the hosts read, through which to remove voter %s: %w", v.name, id, errRemoval)
	}
	if err := quorumNow(v); err != nil {
		return fmt.Errorf("voter %s cannot be removed: %w: %w", id, err, errRemoval)
	}
	healthy := 0
	for _, x := range v.voters {
		if x.ID != id && x.Healthy {
			healthy++
		}
	}
	after := len(v.voters) - 1
	if needed := after/2 + 1; healthy < needed {
		return fmt.Errorf("removing voter %s would leave %d healthy of %d voters, %d needed for the quorum: %w", id, healthy, after, needed, errRemoval)
	}
	return nil
}

// quorumNow refuses a cluster whose healthy voters are not a majority
// now (a voter change seals a validator key first, which it could not
// commit), or whose engines disagree (lucidctl status's errors: a split,
// a leader cut off, two hosts as one node), which no voter change should
// be made in.
func quorumNow(v *clusterView) error {
	c := v.cluster
	switch {
	case c == nil:
	case !c.Quorum:
		return fmt.Errorf("cluster %s has no quorum now (%d of %d voters healthy, %d needed), so no change of its voters can be committed", v.name, c.HealthyVoters, len(c.Voters), c.QuorumNeeded)
	case len(c.Errors) > 0:
		return fmt.Errorf("cluster %s is not sound: %s", v.name, strings.Join(c.Errors, "; "))
	}
	return nil
}

// validatorKeyOf is the key of the chain's validator set named after node
// id: an engine names its key after its node id when it makes it.
// errNoKeyNamed: no validator key carries the voter's name.
var errNoKeyNamed = errors.New("no key is named")

func validatorKeyOf(id string, keys []string) (string, error) {
	var found []string
	for _, k := range keys {
		if vr, err := chain.ParseVerifier(k); err == nil && vr.Name() == id {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("%w %s among the chain's %d validators", errNoKeyNamed, id, len(keys))
	}
	return "", fmt.Errorf("%d keys of the chain's validators are named %s", len(found), id)
}

// voterAPI is the engine's voter API on one host of the cluster, as the
// operator (hostservices, through the host's SSH connection).
type voterAPI interface {
	AddVoter(ctx context.Context, req engineapi.AddVoterRequest) error
	RemoveVoter(ctx context.Context, id, key string) error
	// Validators are the chain's validator keys.
	Validators(ctx context.Context) ([]string, error)
	// ProbeRaft checks that the host reaches an engine's Raft transport
	// at addr (and, with the mesh on, verifies its certificate).
	ProbeRaft(ctx context.Context, addr string) error
	Close()
}

// membership is what joining a host and removing a voter read and call.
type membership struct {
	cluster string
	// view reads every host of the cluster, now.
	view func(ctx context.Context) *clusterView
	// engine reads the consensus status of a host's engine.
	engine func(ctx context.Context, target string) (*engineapi.ConsensusStatus, error)
	// voters opens the voter API of a host's engine.
	voters func(ctx context.Context, target string) (voterAPI, error)
	// audit records a voter change made through a host in its audit
	// trail.
	audit func(ctx context.Context, target string, args []string, err error) error
	rep   deploy.Reporter
	// poll is how long to wait before reading again (default joinPoll).
	poll time.Duration
	// raftAddr is the Raft address a host's engine advertises in the
	// release being deployed (nil: any): an engine that advertises
	// another is the release before's, still running.
	raftAddr func(target string) string
}

// sameRaftAddr says whether an engine advertising got advertises want,
// the address its release gives it, compared as addresses (an engine
// advertises its address resolved, in its own spelling). lucid.yaml takes
// only addresses for a cluster's hosts; a want that is none is not
// compared rather than never matched.
func sameRaftAddr(got, want string) bool {
	w, err := netip.ParseAddrPort(want)
	if err != nil {
		return true
	}
	g, err := netip.ParseAddrPort(got)
	return err == nil && g.Addr().Unmap() == w.Addr().Unmap() && g.Port() == w.Port()
}

// joinPoll is how often a join reads its host's engine or the cluster
// again.
const joinPoll = 2 * time.Second

// joinAttempts bounds the tries at adding a voter through a leader, when
// the cluster has none for a moment or leadership moves meanwhile.
const joinAttempts = 5

func (m *membership) event(target string, step deploy.Step, status deploy.EventStatus, msg string) {
	m.rep.Event(deploy.Event{Time: time.Now(), Target: target, Step: step, Status: status, Message: msg})
}

// wait waits one poll, or until ctx ends.
func (m *membership) wait(ctx context.Context) error {
	d := m.poll
	if d <= 0 {
		d = joinPoll
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// join adds host target's engine to the cluster as a voter once the
// engine answers as node target with no Raft configuration: with the
// validator key and Raft address its consensus status gives, through the
// leader's host, whose engine seals the key into the chain and then adds
// the voter. It runs beside the host's deploy, since an engine waiting to
// be added knows no leader and so never passes its health gate, and reads
// the engine every poll until ctx ends. An engine that already is a voter
// is left as it is.
func (m *membership) join(ctx context.Context, target string) error {
	var cs *engineapi.ConsensusStatus
	last := "its engine did not answer"
	for cs == nil {
		got, err := m.engine(ctx, target)
		switch {
		case err != nil:
			last = "its engine: " + firstLine(err.Error())
		case got.NodeID != target:
			// The release before may still run; the new engine is target.
			last = fmt.Sprintf("its engine answers as node %s, not %s (are the env files rendered for cluster %s?)", got.NodeID, target, m.cluster)
		case m.raftAddr != nil && !sameRaftAddr(got.RaftAddr, m.raftAddr(target)):
			// The engine of a release before (a deploy that failed)
			// with another address: added, it would be a voter no one
			// reaches once this release's engine replaces it.
			last = fmt.Sprintf("its engine advertises Raft address %s, not %s (the release before may still run)", got.RaftAddr, m.raftAddr(target))
		case len(got.Servers) == 0:
			cs = got // waiting to be added
		case len(got.Servers) > 1 && m.view(ctx).voter(target) != nil:
			// The leader reached it first (a new card in a voter's place):
			// a voter, but its key may not be sealed yet.
			cs = got
		default:
			return fmt.Errorf("%s's engine holds a Raft configuration of its own (%s), not cluster %s's: it is not added", target, describeServers(got.Servers), m.cluster)
		}
		if cs != nil {
			break
		}
		if err := m.wait(ctx); err != nil {
			return fmt.Errorf("%s did not join cluster %s: %s: %w", target, m.cluster, last, err)
		}
	}
	if err := reachableRaftAddr(cs.RaftAddr); err != nil {
		return fmt.Errorf("%s cannot join cluster %s: its engine's Raft address %s %w (LUCID_RAFT_ADVERTISE of its env file)", target, m.cluster, cs.RaftAddr, err)
	}
	req := engineapi.AddVoterRequest{ID: target, Address: cs.RaftAddr, Key: cs.ValidatorKey}
	var err error
	for range joinAttempts {
		v := m.view(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		leader := v.leaderTarget
		if v.voter(target) != nil && leader != "" {
			if sealed, serr := m.keySealed(ctx, leader, cs.ValidatorKey); serr == nil && sealed {
				m.event(target, deploy.StepJoin, deploy.EventInfo, "already a voter of the cluster, its validator key sealed")
				return nil
			}
		}
		if leader == "" {
			err = fmt.Errorf("%s cannot join cluster %s: %s", target, m.cluster, noLeader(v))
		} else {
			m.event(target, deploy.StepJoin, deploy.EventStart, fmt.Sprintf("its engine answers: sealing its validator key into the chain, then adding it as a voter at %s, through the leader %s", cs.RaftAddr, leader))
			err = m.addVoter(ctx, leader, req)
			if err == nil {
				m.event(target, deploy.StepJoin, deploy.EventInfo, "added as a voter; its engine now follows the leader "+leader)
				return nil
			}
			if hostservices.NotLeader(err) {
				err = fmt.Errorf("%s cannot join cluster %s: %s no longer leads: %w", target, m.cluster, leader, err)
			} else {
				err = fmt.Errorf("%s cannot join cluster %s: through the leader %s: %w", target, m.cluster, leader, err)
			}
			// An election mid-change, or a commit slower than the engine
			// waits, is made again, through the leader then.
			if !hostservices.Unfinished(err) {
				return err
			}
		}
		if werr := m.wait(ctx); werr != nil {
			return errors.Join(err, werr)
		}
	}
	return err
}

// addVoter adds the voter through host leader, and records it in that
// host's audit trail.
func (m *membership) addVoter(ctx context.Context, leader string, req engineapi.AddVoterRequest) error {
	api, err := m.voters(ctx, leader)
	if err != nil {
		return err
	}
	defer api.Close()
	// A voter the leader cannot reach would hold up every commit that
	// needs it (all of them, in a cluster of two), and no configuration
	// change can take it out again without it: it is not added.
	if err := api.ProbeRaft(ctx, req.Address); err != nil {
		return fmt.Errorf("the leader's host cannot reach %s's engine over Raft, so it is not added: %w", req.ID, err)
	}
	err = api.AddVoter(ctx, req)
	if aerr := m.audit(ctx, leader, hostservices.VoterAddAudit(req), err); aerr != nil && err == nil {
		m.event(req.ID, deploy.StepJoin, deploy.EventWarn, fmt.Sprintf("added through %s, but %v", leader, aerr))
	}
	return err
}

// keySealed says whether key is among the chain's validators, as the
// leader's host reads them.
func (m *membership) keySealed(ctx context.Context, leader, key string) (bool, error) {
	api, err := m.voters(ctx, leader)
	if err != nil {
		return false, err
	}
	defer api.Close()
	keys, err := api.Validators(ctx)
	return slices.Contains(keys, key), err
}

// noLeader says why the cluster has no leader to go through.
func noLeader(v *clusterView) string {
	if v.leaderID != "" {
		return fmt.Sprintf("its leader %s is not among the hosts read", v.leaderID)
	}
	return "it has no leader now"
}

// reachableRaftAddr refuses an address the other hosts cannot reach: a
// loopback or unspecified one is the engine's default, left when its env
// file lacks its cluster address.
func reachableRaftAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("is not host:port: %w", err)
	}
	if ip := net.ParseIP(host); ip != nil && (ip.IsLoopback() || ip.IsUnspecified()) || host == "localhost" {
		return errors.New("is not one the other hosts can reach")
	}
	return nil
}

// keyUnsealed says whether h's engine says its validator key is not among
// the chain's validators.
func keyUnsealed(h *deploy.HostStatus) bool {
	return h != nil && h.Reports.ValidatorSealed != nil && !*h.Reports.ValidatorSealed
}

// confirmJoined waits, until deadline, until the leader's configuration
// holds target as a voter whose engine answers as a healthy leader or
// follower (its host's gate has seen it catch up), and its chain holds
// the engine's validator key.
func (m *membership) confirmJoined(ctx context.Context, target string, deadline time.Time) error {
	for {
		v := m.view(ctx)
		x := v.voter(target)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case x != nil && x.Healthy && v.leaderTarget != "" && !keyUnsealed(v.status[target]):
			healthy := 0
			for _, y := range v.voters {
				if y.Healthy {
					healthy++
				}
			}
			m.event(target, deploy.StepJoin, deploy.EventOK, fmt.Sprintf("a voter of cluster %s (%d voters, %d healthy, leader %s), caught up", m.cluster, len(v.voters), healthy, v.leaderID))
			return nil
		case !time.Now().Before(deadline):
			why := "the leader's configuration does not hold it"
			switch {
			case x != nil && !x.Healthy:
				why = "it is a voter, but not a healthy one: " + x.Why
			case x != nil && keyUnsealed(v.status[target]):
				why = "its validator key is not sealed in the chain, so it must not lead (deploy it again: its engine joins again, sealing its key)"
			case v.leaderTarget == "":
				why = noLeader(v)
			}
			err := fmt.Errorf("%s joined cluster %s, but %s", target, m.cluster, why)
			m.event(target, deploy.StepJoin, deploy.EventFail, err.Error())
			return err
		}
		if err := m.wait(ctx); err != nil {
			return err
		}
	}
}

// confirmBootstrap says whether target's engine leads the cluster it
// started, alone in its configuration.
func (m *membership) confirmBootstrap(ctx context.Context, target string) {
	cs, err := m.engine(ctx, target)
	switch {
	case err != nil:
		m.event(target, deploy.StepBootstrap, deploy.EventWarn, "its engine's consensus status: "+firstLine(err.Error()))
	case cs.State == "leader" && len(cs.Servers) == 1 && cs.Servers[0].ID == target:
		m.event(target, deploy.StepBootstrap, deploy.EventOK, fmt.Sprintf("its engine leads the new cluster %s, its one voter so far", m.cluster))
	default:
		m.event(target, deploy.StepBootstrap, deploy.EventWarn, "its engine did not start a cluster of its own: "+describeConsensus(cs))
	}
}

func describeConsensus(cs *engineapi.ConsensusStatus) string {
	return fmt.Sprintf("node %s, %s, leader %q, servers: %s", cs.NodeID, cs.State, cs.LeaderID, describeServers(cs.Servers))
}

// leave reports the voters of the cluster's configuration that are no
// host of the cluster in lucid.yaml, and removes those that remove names,
// one at a time, each with its validator key: each only while the voters
// left keep a healthy majority, and never the leader (checkRemoval). dry
// says what it would do.
func (m *membership) leave(ctx context.Context, remove []string, dry bool) error {
	v := m.view(ctx)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, x := range v.strangers() {
		if !slices.Contains(remove, x.ID) {
			m.event(m.cluster, deploy.StepLeave, deploy.EventWarn, fmt.Sprintf("voter %s (%s) is no host of cluster %s in lucid.yaml; it stays a voter (--remove-voter %s removes it, with its validator key)", x.ID, x.Address, m.cluster, x.ID))
		}
	}
	for _, id := range remove {
		if v.voter(id) == nil {
			if err := m.leaveKey(ctx, v, id, dry); err != nil {
				m.event(m.cluster, deploy.StepLeave, deploy.EventFail, err.Error())
				return err
			}
			continue
		}
		if err := checkRemoval(v, id); err != nil {
			m.event(m.cluster, deploy.StepLeave, deploy.EventFail, err.Error())
			return fmt.Errorf("%w; nothing was changed", err)
		}
		leader := v.leaderTarget
		api, err := m.voters(ctx, leader)
		if err != nil {
			return fmt.Errorf("remove voter %s through the leader %s: %w", id, leader, err)
		}
		err = m.removeVoter(ctx, api, leader, id, dry)
		api.Close()
		if err != nil {
			m.event(m.cluster, deploy.StepLeave, deploy.EventFail, err.Error())
			return err
		}
		if dry {
			continue
		}
		// The next removal is judged on the configuration this one left.
		if v = m.view(ctx); ctx.Err() != nil {
			return ctx.Err()
		}
		if v.voter(id) != nil {
			err := fmt.Errorf("voter %s was removed through %s, but the configuration read afterwards still holds it", id, leader)
			m.event(m.cluster, deploy.StepLeave, deploy.EventFail, err.Error())
			return err
		}
		m.event(m.cluster, deploy.StepLeave, deploy.EventOK, fmt.Sprintf("voter %s and its validator key removed; %d voters left", id, len(v.voters)))
	}
	return nil
}

// leaveKey finishes the removal of id, no voter (any more): the engine
// takes a voter out of Raft first and seals its key's removal second, so
// a removal cut off between the two (the seal timed out, the leader
// changed, the laptop died) leaves a validator key named after it, which
// a card of it brought back could sign with. That key is removed now.
func (m *membership) leaveKey(ctx context.Context, v *clusterView, id string, dry bool) error {
	leader := v.leaderTarget
	if leader == "" {
		m.event(m.cluster, deploy.StepLeave, deploy.EventWarn, fmt.Sprintf("%s is no voter of cluster %s; whether a validator key named after it is left is not known, as %s: run again to check", id, m.cluster, noLeader(v)))
		return nil
	}
	api, err := m.voters(ctx, leader)
	if err != nil {
		return fmt.Errorf("the validators of cluster %s, through the leader %s: %w", m.cluster, leader, err)
	}
	defer api.Close()
	keys, err := api.Validators(ctx)
	if err != nil {
		return fmt.Errorf("the chain's validators, through %s: %w", leader, err)
	}
	key, err := validatorKeyOf(id, keys)
	switch {
	case errors.Is(err, errNoKeyNamed):
		m.event(m.cluster, deploy.StepLeave, deploy.EventInfo, fmt.Sprintf("%s is no voter of cluster %s, and no validator key is named after it: nothing to remove", id, m.cluster))
		return nil
	case err != nil:
		return cli.WithHint(fmt.Errorf("%s is no voter of cluster %s, but its validator key is not known: %w", id, m.cluster, err),
			"`lucidctl maintenance voters remove "+id+" --key KEY --target "+leader+"` removes the key named")
	}
	// A key is named after the node that made it; an engine whose node id
	// was changed since keeps its key, under the old name. Such a key is
	// a live voter's, and stays.
	for _, h := range v.hosts {
		if cs, err := m.engine(ctx, h); err == nil && cs.ValidatorKey == key {
			return fmt.Errorf("the validator key named %s is the key of %s's engine (node %s), which runs: it is not removed: %w", id, h, cs.NodeID, errRemoval)
		}
	}
	if err := quorumNow(v); err != nil {
		return fmt.Errorf("the validator key of %s cannot be removed: %w: %w", id, err, errRemoval)
	}
	if dry {
		m.event(m.cluster, deploy.StepLeave, deploy.EventInfo, fmt.Sprintf("%s is no voter of cluster %s, but its validator key is: would remove the key, through the leader %s", id, m.cluster, leader))
		return nil
	}
	m.event(m.cluster, deploy.StepLeave, deploy.EventStart, fmt.Sprintf("%s is no voter of cluster %s, but its validator key is (a removal of before stopped halfway): sealing the key's removal, through the leader %s", id, m.cluster, leader))
	if err := m.removeThrough(ctx, api, leader, id, key); err != nil {
		return fmt.Errorf("remove the validator key of %s through the leader %s: %w", id, leader, err)
	}
	m.event(m.cluster, deploy.StepLeave, deploy.EventOK, fmt.Sprintf("the validator key of %s removed", id))
	return nil
}

// removeVoter removes voter id, with the validator key named after it,
// through host leader.
func (m *membership) removeVoter(ctx context.Context, api voterAPI, leader, id string, dry bool) error {
	keys, err := api.Validators(ctx)
	if err != nil {
		return fmt.Errorf("remove voter %s: the chain's validators, through %s: %w", id, leader, err)
	}
	key, err := validatorKeyOf(id, keys)
	switch {
	case errors.Is(err, errNoKeyNamed):
		// Its key left the chain already (removed by hand with
		// maintenance voters): it leaves Raft alone.
		key = ""
	case err != nil:
		return cli.WithHint(fmt.Errorf("voter %s is not removed: its validator key is not known: %w", id, err),
			"`lucidctl maintenance voters remove "+id+" --key KEY --target "+leader+"` removes it with the key named")
	}
	if dry {
		m.event(m.cluster, deploy.StepLeave, deploy.EventInfo, fmt.Sprintf("would remove voter %s and its validator key, through the leader %s", id, leader))
		return nil
	}
	says := fmt.Sprintf("removing %s from the voters, then sealing the removal of its validator key, through the leader %s", id, leader)
	if key == "" {
		says = fmt.Sprintf("removing %s from the voters (its validator key left the chain already), through the leader %s", id, leader)
	}
	m.event(m.cluster, deploy.StepLeave, deploy.EventStart, says)
	if err := m.removeThrough(ctx, api, leader, id, key); err != nil {
		return fmt.Errorf("remove voter %s through the leader %s: %w", id, leader, err)
	}
	return nil
}

// removeThrough removes voter id (if still one) and the validator key key
// (if any) through host leader's engine, and records it in that host's
// audit trail, whether it went through or not.
func (m *membership) removeThrough(ctx context.Context, api voterAPI, leader, id, key string) error {
	err := api.RemoveVoter(ctx, id, key)
	if aerr := m.audit(ctx, leader, hostservices.VoterRemoveAudit(id, key), err); aerr != nil && err == nil {
		m.event(m.cluster, deploy.StepLeave, deploy.EventWarn, fmt.Sprintf("removed through %s, but %v", leader, aerr))
	}
	return err
}

// firstLine keeps the first line of s.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	return s
}
