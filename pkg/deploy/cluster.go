package deploy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/catalog"
)

// Cluster is the verdict on the Raft cluster that the engines of a group
// of hosts form, from their consensus status read in one status run.
type Cluster struct {
	// Voters are the voters of the Raft configuration (the leader's, else
	// that of the engine furthest on), each with the host that answered as
	// it.
	Voters []Voter `json:"voters"`
	// HealthyVoters counts the voters whose engine is healthy and whose
	// engine answered as leader or follower; Quorum is true when they are
	// at least QuorumNeeded, a majority of the voters. UnreadVoters are
	// the voters no host read answered as: on hosts not selected, or on
	// hosts read whose engine did not answer, which count as down. While
	// the others could still make up a quorum, it is neither known nor
	// known lost (QuorumLost false).
	HealthyVoters int  `json:"healthy_voters"`
	UnreadVoters  int  `json:"unread_voters"`
	QuorumNeeded  int  `json:"quorum_needed"`
	Quorum        bool `json:"quorum"`
	QuorumLost    bool `json:"quorum_lost"`
	// Term is the newest Raft term a leader or follower answered with
	// (a candidate's only when no engine is either).
	Term uint64 `json:"term"`
	// Leader is the one leader of the highest term: the engine that says
	// it leads, else the leader the others name; nil when there is none.
	Leader *ClusterLeader `json:"leader"`
	// NewestBlockTime is the freshest newest block among the hosts, and
	// NewestBlockAgeSec its age by its host's clock; absent when no host
	// could say.
	NewestBlockTime   time.Time `json:"newest_block_time,omitzero"`
	NewestBlockAgeSec *float64  `json:"newest_block_age_seconds,omitempty"`
	NewestBlockTarget string    `json:"newest_block_target,omitempty"`
	// Errors are the signs of a split or a partition: two engines that
	// lead in one term, engines that name different leaders in one term, a
	// leader of an older term, two hosts answering as one node.
	Errors []string `json:"errors"`
	// Healthy is a quorum not known lost, a leader and no error: a
	// status of some of a cluster's hosts judges only what it read.
	Healthy bool `json:"healthy"`
}

// Voter is one voter of the configuration.
type Voter struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	// Target is the host whose engine answered as this voter; empty when
	// none of the hosts read did.
	Target string `json:"target,omitempty"`
	// State is that engine's Raft state.
	State   string `json:"state,omitempty"`
	Healthy bool   `json:"healthy"`
	// Why says why a voter is not healthy.
	Why string `json:"why,omitempty"`
}

// ClusterLeader is the cluster's leader: its Raft server id and the host
// whose engine answered as it (empty when that host was not read).
type ClusterLeader struct {
	ID     string `json:"id"`
	Target string `json:"target,omitempty"`
}

// SetCommitLag sets each host's RaftCommitLag from the leader among hosts
// read in the same status run: the leader's applied index minus the
// host's (0 when the host was read after catching up further). A host
// whose engine leads has lag 0; one whose leader was not read has its lag
// in Unknown with the reason. Hosts are read at slightly different
// moments, so a lag of a few entries is the normal noise of a busy chain.
func SetCommitLag(hosts []*HostStatus) {
	for _, h := range hosts {
		r := &h.Reports
		unknown := func(why string) {
			if h.Unknown == nil {
				h.Unknown = map[string]string{}
			}
			h.Unknown[FigureCommitLag] = why
		}
		switch {
		case r.RaftRole == "":
			if why, ok := h.Unknown[FigureRaftRole]; ok {
				unknown(why)
			} else {
				unknown("the engine's consensus status was not read")
			}
			continue
		case r.RaftAppliedIndex == nil:
			unknown("the engine did not report its applied index")
			continue
		case r.RaftRole == "leader":
			zero := uint64(0)
			r.RaftCommitLag = &zero
			continue
		case r.RaftLeaderID == "":
			unknown("the engine knows no leader")
			continue
		}
		leader := leaderOf(h, hosts)
		if leader == nil || leader.Reports.RaftAppliedIndex == nil {
			unknown("no leader was read: the leader " + r.RaftLeaderID + " is not among the hosts read")
			continue
		}
		lag := uint64(0)
		if la, a := *leader.Reports.RaftAppliedIndex, *r.RaftAppliedIndex; la > a {
			lag = la - a
		}
		r.RaftCommitLag = &lag
	}
}

// leaderOf is the host whose engine is the leader h's engine names, in h's
// configuration (node ids repeat across separate one-voter hosts).
func leaderOf(h *HostStatus, hosts []*HostStatus) *HostStatus {
	for _, o := range hosts {
		r := o.Reports
		if o != h && r.RaftRole == "leader" && r.RaftNodeID == h.Reports.RaftLeaderID && hasServer(r.RaftServers, h.Reports.RaftNodeID) {
			return o
		}
	}
	return nil
}

func hasServer(servers []engineapi.Server, id string) bool {
	return slices.ContainsFunc(servers, func(s engineapi.Server) bool { return s.ID == id })
}

// ClusterOf judges the Raft cluster the hosts' engines form: nil when
// none of them is in a configuration of more than one server (a single
// host, or hosts each with its own one-voter chain), which is then no
// cluster to judge.
func ClusterOf(hosts []*HostStatus) *Cluster {
	var members, alone []*HostStatus
	silent := 0 // hosts read whose engine did not say who it is
	for _, h := range hosts {
		switch {
		case h == nil:
		case h.Reports.RaftRole == "":
			silent++
		case len(h.Reports.RaftServers) > 1:
			members = append(members, h)
		default:
			alone = append(alone, h)
		}
	}
	if len(members) == 0 {
		return nil
	}
	c := &Cluster{Voters: []Voter{}, Errors: []string{}}
	// The cluster's term is the newest a leader or follower is in: a
	// candidate cut off from the others raises its own term in vain.
	for _, h := range members {
		if r := h.Reports.RaftRole; r == "leader" || r == "follower" {
			c.Term = max(c.Term, raftTerm(h))
		}
	}
	if c.Term == 0 {
		for _, h := range members {
			c.Term = max(c.Term, raftTerm(h))
		}
	}

	// Who says it leads: two in one term is a split; one of an older term
	// than the cluster's is cut off from the others and has not noticed.
	byTerm := map[uint64][]*HostStatus{}
	for _, h := range members {
		if h.Reports.RaftRole == "leader" {
			byTerm[raftTerm(h)] = append(byTerm[raftTerm(h)], h)
		}
	}
	terms := make([]uint64, 0, len(byTerm))
	for t := range byTerm {
		terms = append(terms, t)
	}
	slices.Sort(terms)
	var leaderHost *HostStatus
	for _, t := range terms {
		ls := byTerm[t]
		switch {
		case len(ls) > 1:
			c.Errors = append(c.Errors, fmt.Sprintf("split: %s each say they lead in term %d", nodesOn(ls), t))
		case t < c.Term:
			c.Errors = append(c.Errors, fmt.Sprintf("%s says it leads in term %d, but the cluster is at term %d: it is cut off from the others", nodesOn(ls), t, c.Term))
		default:
			leaderHost = ls[0]
		}
	}

	// Who the engines of the cluster's term name as their leader.
	named := map[string][]*HostStatus{}
	for _, h := range members {
		if raftTerm(h) == c.Term && h.Reports.RaftLeaderID != "" {
			named[h.Reports.RaftLeaderID] = append(named[h.Reports.RaftLeaderID], h)
		}
	}
	if len(named) > 1 {
		var says []string
		for _, id := range sortedKeys(named) {
			verb := "names"
			if len(named[id]) > 1 {
				verb = "name"
			}
			says = append(says, fmt.Sprintf("%s %s %s", targets(named[id]), verb, id))
		}
		c.Errors = append(c.Errors, fmt.Sprintf("the engines disagree on the leader in term %d: %s", c.Term, strings.Join(says, ", ")))
	}
	switch {
	case leaderHost != nil:
		c.Leader = &ClusterLeader{ID: leaderHost.Reports.RaftNodeID, Target: leaderHost.Target}
	case len(named) == 1 && len(byTerm[c.Term]) == 0:
		for id := range named {
			c.Leader = &ClusterLeader{ID: id}
		}
	}

	// The configuration: the leader's, else that of the engine furthest on.
	ref := leaderHost
	if ref == nil {
		ref = slices.MaxFunc(members, func(a, b *HostStatus) int {
			return cmp.Or(cmp.Compare(raftTerm(a), raftTerm(b)), cmp.Compare(deref64(a.Reports.RaftLastIndex), deref64(b.Reports.RaftLastIndex)))
		})
	}
	byNode := map[string][]*HostStatus{}
	for _, h := range members {
		byNode[h.Reports.RaftNodeID] = append(byNode[h.Reports.RaftNodeID], h)
	}
	for _, id := range sortedKeys(byNode) {
		if hs := byNode[id]; len(hs) > 1 {
			c.Errors = append(c.Errors, fmt.Sprintf("%s answer as the same node %s", targets(hs), id))
		}
	}
	for _, s := range ref.Reports.RaftServers {
		if !s.Voter {
			continue
		}
		v := Voter{ID: s.ID, Address: s.Address, Why: "no host read answered as it"}
		if i := slices.IndexFunc(alone, func(h *HostStatus) bool { return h.Reports.RaftNodeID == s.ID }); i >= 0 {
			// Wiped and bootstrapped again, say: it leads a chain of its own.
			h := alone[i]
			v.Target, v.State, v.Why = h.Target, h.Reports.RaftRole, "its engine runs a chain of its own"
			c.Errors = append(c.Errors, fmt.Sprintf("%s answers as %s from a configuration of its own: a separate chain, not this cluster's", h.Target, s.ID))
		}
		if hs := byNode[s.ID]; len(hs) > 0 {
			h := hs[0]
			v.Target, v.State, v.Why = h.Target, h.Reports.RaftRole, ""
			switch ok, why := EngineHealth(h); {
			case !ok:
				v.Why = why
			case v.State != "leader" && v.State != "follower":
				v.Why = "its engine is " + v.State
			default:
				v.Healthy = true
				c.HealthyVoters++
			}
		}
		if v.Target == "" {
			c.UnreadVoters++
		}
		c.Voters = append(c.Voters, v)
	}
	for _, h := range members {
		if !hasServer(ref.Reports.RaftServers, h.Reports.RaftNodeID) {
			c.Errors = append(c.Errors, fmt.Sprintf("%s answers as %s, which is not in the cluster's configuration", h.Target, h.Reports.RaftNodeID))
		}
	}
	c.QuorumNeeded = len(c.Voters)/2 + 1
	c.Quorum = c.HealthyVoters >= c.QuorumNeeded
	// A host read whose engine did not answer may be any unread voter:
	// each is taken for one, down. The other unread voters may be up.
	c.QuorumLost = c.HealthyVoters+max(0, c.UnreadVoters-silent) < c.QuorumNeeded

	for _, h := range members {
		if t := h.Reports.NewestBlockTime; !t.IsZero() && t.After(c.NewestBlockTime) {
			c.NewestBlockTime, c.NewestBlockAgeSec, c.NewestBlockTarget = t, h.Reports.NewestBlockAgeSec, h.Target
		}
	}
	c.Healthy = !c.QuorumLost && c.Leader != nil && len(c.Errors) == 0
	return c
}

func raftTerm(h *HostStatus) uint64 { return deref64(h.Reports.RaftTerm) }

func deref64(p *uint64) uint64 {
	if p == nil {
		return 0
	}
	return *p
}

// nodesOn names hosts with their engines' node ids: "pi1 (n1) and pi2 (n2)".
func nodesOn(hs []*HostStatus) string {
	var names []string
	for _, h := range hs {
		names = append(names, fmt.Sprintf("%s (%s)", h.Target, h.Reports.RaftNodeID))
	}
	return andList(names)
}

func targets(hs []*HostStatus) string {
	var names []string
	for _, h := range hs {
		names = append(names, h.Target)
	}
	return andList(names)
}

func andList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// EngineHealth says whether h's engine container runs and passes its
// healthcheck, and if not why: a voter's health is its engine's, whatever
// the host's other containers do (a sick gateway takes no vote away). A
// host whose containers were not read is judged whole.
func EngineHealth(h *HostStatus) (ok bool, why string) {
	i := slices.IndexFunc(h.Services, func(s ServiceState) bool { return s.Service == catalog.EngineService })
	if i < 0 {
		if h.Healthy {
			return true, ""
		}
		return false, "its host is unhealthy"
	}
	switch s := h.Services[i]; {
	case s.State != "running":
		return false, "its engine container is " + s.State
	case s.Health != "healthy" && s.Health != "none":
		return false, "its engine container is " + s.Health
	}
	return true, ""
}
