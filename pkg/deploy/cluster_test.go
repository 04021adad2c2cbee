package deploy

import (
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/api/engineapi"
)

// three is the configuration of a three-voter cluster.
var three = []engineapi.Server{
	{ID: "n1", Address: "10.0.0.11:8094", Voter: true},
	{ID: "n2", Address: "10.0.0.12:8094", Voter: true},
	{ID: "n3", Address: "10.0.0.13:8094", Voter: true},
}

// engineOn is a healthy host whose engine answered its consensus status.
func engineOn(target, node, role string, term, applied uint64, leader string, servers []engineapi.Server) *HostStatus {
	last := applied + 1
	return &HostStatus{Target: target, Healthy: true, Reports: ServiceReports{
		RaftRole: role, RaftNodeID: node, RaftTerm: &term, RaftLastIndex: &last, RaftAppliedIndex: &applied,
		RaftLeaderID: leader, RaftServers: servers,
	}}
}

// unread is a host whose engine's consensus status could not be read.
func unread(target string) *HostStatus {
	return &HostStatus{Target: target, Healthy: true, Unknown: map[string]string{FigureRaftRole: "engine does not run"}}
}

func lagOf(h *HostStatus) string {
	if h.Reports.RaftCommitLag != nil {
		return strconv.FormatUint(*h.Reports.RaftCommitLag, 10)
	}
	return "unknown (" + h.Unknown[FigureCommitLag] + ")"
}

// TestCommitLag: the lag is the leader's applied index minus the host's,
// 0 on the leader and for a host read after catching up, and unknown
// (with why) when the host knows no leader, its leader was not read, or
// its consensus status was not.
func TestCommitLag(t *testing.T) {
	hosts := []*HostStatus{
		engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
		engineOn("pi2", "n2", "follower", 7, 497, "n1", three),
		engineOn("pi3", "n3", "follower", 7, 502, "n1", three), // read a moment later
		unread("pi4"),
	}
	SetCommitLag(hosts)
	for i, want := range []string{"0", "3", "0", "unknown (engine does not run)"} {
		if got := lagOf(hosts[i]); got != want {
			t.Errorf("%s: lag %s, want %s", hosts[i].Target, got, want)
		}
	}

	// The leader not among the hosts read (--hosts pi2), and a candidate
	// that knows none.
	alone := []*HostStatus{engineOn("pi2", "n2", "follower", 7, 497, "n1", three), engineOn("pi3", "n3", "candidate", 8, 497, "", three)}
	SetCommitLag(alone)
	if got := lagOf(alone[0]); got != "unknown (no leader was read: the leader n1 is not among the hosts read)" {
		t.Errorf("leader not read: lag %s", got)
	}
	if got := lagOf(alone[1]); got != "unknown (the engine knows no leader)" {
		t.Errorf("no leader known: lag %s", got)
	}

	// Separate one-voter hosts share the deployed node id: each leads its
	// own chain, at lag 0, and is nobody's leader.
	one := func(target string, applied uint64) *HostStatus {
		return engineOn(target, "lucid-blockchain-engine", "leader", 2, applied, "lucid-blockchain-engine",
			[]engineapi.Server{{ID: "lucid-blockchain-engine", Address: "127.0.0.1:8094", Voter: true}})
	}
	singles := []*HostStatus{one("pi1", 900), one("pi2", 40)}
	SetCommitLag(singles)
	if lagOf(singles[0]) != "0" || lagOf(singles[1]) != "0" {
		t.Errorf("one-voter hosts: lags %s, %s", lagOf(singles[0]), lagOf(singles[1]))
	}
	if c := ClusterOf(singles); c != nil {
		t.Errorf("one-voter hosts have a cluster verdict: %+v", c)
	}
	if c := ClusterOf(singles[:1]); c != nil {
		t.Errorf("a single host has a cluster verdict: %+v", c)
	}
	if c := ClusterOf([]*HostStatus{unread("pi1")}); c != nil {
		t.Errorf("a host without consensus status has a cluster verdict: %+v", c)
	}
}

// TestClusterVerdict: quorum is a majority of healthy voters; a cluster
// without quorum, without a leader, or with two leaders in one term is
// unhealthy, and each sign of a split is an error in words.
func TestClusterVerdict(t *testing.T) {
	sick := func(h *HostStatus) *HostStatus { h.Healthy = false; return h }
	for _, tc := range []struct {
		name    string
		hosts   []*HostStatus
		healthy int
		quorum  bool
		leader  *ClusterLeader
		errors  []string
		ok      bool
	}{
		{
			name: "3 voters, all healthy",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "follower", 7, 499, "n1", three),
				engineOn("pi3", "n3", "follower", 7, 500, "n1", three),
			},
			healthy: 3, quorum: true, leader: &ClusterLeader{ID: "n1", Target: "pi1"}, ok: true,
		},
		{
			name: "3 voters, 2 healthy: quorum",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "follower", 7, 499, "n1", three),
				sick(engineOn("pi3", "n3", "follower", 7, 480, "n1", three)),
			},
			healthy: 2, quorum: true, leader: &ClusterLeader{ID: "n1", Target: "pi1"}, ok: true,
		},
		{
			name: "3 voters, 1 healthy: no quorum",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "candidate", 7, 499, "", three),
				unread("pi3"),
			},
			healthy: 1, quorum: false, leader: &ClusterLeader{ID: "n1", Target: "pi1"}, ok: false,
		},
		{
			name: "a candidate cut off raises its own term, not the cluster's",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "follower", 7, 499, "n1", three),
				engineOn("pi3", "n3", "candidate", 12, 410, "", three),
			},
			healthy: 2, quorum: true, leader: &ClusterLeader{ID: "n1", Target: "pi1"}, ok: true,
		},
		{
			name: "no leader: followers that know none",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "follower", 9, 500, "", three),
				engineOn("pi2", "n2", "follower", 9, 500, "", three),
				engineOn("pi3", "n3", "follower", 9, 500, "", three),
			},
			healthy: 3, quorum: true, leader: nil, ok: false,
		},
		{
			name: "the leader's host not read: named by the others",
			hosts: []*HostStatus{
				engineOn("pi2", "n2", "follower", 7, 499, "n1", three),
				engineOn("pi3", "n3", "follower", 7, 500, "n1", three),
			},
			healthy: 2, quorum: true, leader: &ClusterLeader{ID: "n1"}, ok: true,
		},
		{
			name: "two leaders in one term: a split",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "leader", 7, 499, "n2", three),
				engineOn("pi3", "n3", "follower", 7, 500, "n1", three),
			},
			healthy: 3, quorum: true, leader: nil, ok: false,
			errors: []string{
				"split: pi1 (n1) and pi2 (n2) each say they lead in term 7",
				"the engines disagree on the leader in term 7: pi1 and pi3 name n1, pi2 names n2",
			},
		},
		{
			name: "a leader of an older term, cut off",
			hosts: []*HostStatus{
				engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
				engineOn("pi2", "n2", "leader", 8, 501, "n2", three),
				engineOn("pi3", "n3", "follower", 8, 501, "n2", three),
			},
			healthy: 3, quorum: true, leader: &ClusterLeader{ID: "n2", Target: "pi2"}, ok: false,
			errors: []string{"pi1 (n1) says it leads in term 7, but the cluster is at term 8: it is cut off from the others"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ClusterOf(tc.hosts)
			if c == nil {
				t.Fatal("no verdict")
			}
			if c.HealthyVoters != tc.healthy || c.Quorum != tc.quorum || c.QuorumNeeded != 2 || len(c.Voters) != 3 {
				t.Errorf("voters %d healthy of %d, quorum %v (needs %d); want %d healthy, quorum %v", c.HealthyVoters, len(c.Voters), c.Quorum, c.QuorumNeeded, tc.healthy, tc.quorum)
			}
			if !reflect.DeepEqual(c.Leader, tc.leader) {
				t.Errorf("leader %+v, want %+v", c.Leader, tc.leader)
			}
			if tc.errors == nil {
				tc.errors = []string{}
			}
			if !reflect.DeepEqual(c.Errors, tc.errors) {
				t.Errorf("errors %q, want %q", c.Errors, tc.errors)
			}
			if c.Healthy != tc.ok {
				t.Errorf("healthy %v, want %v", c.Healthy, tc.ok)
			}
		})
	}
}

// TestClusterVoters: each voter names its host and, when not healthy,
// why; non-voters do not count; the newest block is the freshest of any
// host's.
func TestClusterVoters(t *testing.T) {
	servers := append(append([]engineapi.Server{}, three...), engineapi.Server{ID: "n4", Address: "10.0.0.14:8094"})
	pi1 := engineOn("pi1", "n1", "leader", 7, 500, "n1", servers)
	pi2 := engineOn("pi2", "n2", "follower", 7, 499, "n1", servers)
	pi2.Healthy = false
	older, newer := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC), time.Date(2026, 12, 5, 14, 0, 10, 0, time.UTC)
	age1, age2 := 14.0, 4.0
	pi1.Reports.NewestBlockTime, pi1.Reports.NewestBlockAgeSec = older, &age1
	pi2.Reports.NewestBlockTime, pi2.Reports.NewestBlockAgeSec = newer, &age2
	c := ClusterOf([]*HostStatus{pi1, pi2, unread("pi3")})
	want := []Voter{
		{ID: "n1", Address: "10.0.0.11:8094", Target: "pi1", State: "leader", Healthy: true},
		{ID: "n2", Address: "10.0.0.12:8094", Target: "pi2", State: "follower", Why: "its host is unhealthy"},
		{ID: "n3", Address: "10.0.0.13:8094", Why: "no host read answered as it"},
	}
	if !reflect.DeepEqual(c.Voters, want) {
		t.Errorf("voters\n%+v\nwant\n%+v", c.Voters, want)
	}
	if c.Quorum || c.QuorumNeeded != 2 || c.Healthy {
		t.Errorf("1 of 3 voters healthy: quorum %v (needs %d), healthy %v", c.Quorum, c.QuorumNeeded, c.Healthy)
	}
	if !c.NewestBlockTime.Equal(newer) || c.NewestBlockAgeSec == nil || *c.NewestBlockAgeSec != 4 || c.NewestBlockTarget != "pi2" {
		t.Errorf("newest block %s, %v s old, on %s", c.NewestBlockTime, c.NewestBlockAgeSec, c.NewestBlockTarget)
	}

	// Two hosts answering as one node, and one outside the configuration.
	other := []engineapi.Server{{ID: "n8", Voter: true}, {ID: "n9", Voter: true}}
	c = ClusterOf([]*HostStatus{
		engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
		engineOn("pi2", "n1", "follower", 7, 500, "n1", three),
		engineOn("pi9", "n9", "follower", 3, 10, "n8", other),
	})
	for _, e := range []string{"pi1 and pi2 answer as the same node n1", "pi9 answers as n9, which is not in the cluster's configuration"} {
		if !slices.Contains(c.Errors, e) {
			t.Errorf("errors %q lack %q", c.Errors, e)
		}
	}
}

// TestClusterOfSomeHosts: a voter whose host runs a chain of its own (a
// wiped node bootstrapped again) is a split, not a missing host; and one
// host of a healthy cluster read alone judges only what it read: the
// quorum is unknown, not lost, and the verdict is not unhealthy.
func TestClusterOfSomeHosts(t *testing.T) {
	c := ClusterOf([]*HostStatus{
		engineOn("pi1", "n1", "leader", 7, 500, "n1", three),
		engineOn("pi2", "n2", "follower", 7, 500, "n1", three),
		engineOn("pi3", "n3", "leader", 2, 40, "n3", []engineapi.Server{{ID: "n3", Address: "10.0.0.13:8094", Voter: true}}),
	})
	if c.Healthy || len(c.Errors) != 1 || !strings.Contains(c.Errors[0], "pi3 answers as n3 from a configuration of its own") {
		t.Errorf("a voter on a chain of its own: healthy %v, errors %q", c.Healthy, c.Errors)
	}
	if v := c.Voters[2]; v.Target != "pi3" || v.Healthy || v.Why != "its engine runs a chain of its own" {
		t.Errorf("that voter: %+v", v)
	}

	c = ClusterOf([]*HostStatus{engineOn("pi2", "n2", "follower", 7, 500, "n1", three)})
	if !c.Healthy || c.Quorum || c.QuorumLost || c.UnreadVoters != 2 || c.Leader == nil || c.Leader.ID != "n1" {
		t.Errorf("one follower read alone: healthy %v, quorum %v, lost %v, unread %d, leader %+v", c.Healthy, c.Quorum, c.QuorumLost, c.UnreadVoters, c.Leader)
	}
}
