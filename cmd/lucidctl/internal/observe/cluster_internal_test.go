package observe

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

var three = []engineapi.Server{
	{ID: "n1", Address: "10.0.0.11:8094", Voter: true},
	{ID: "n2", Address: "10.0.0.12:8094", Voter: true},
	{ID: "n3", Address: "10.0.0.13:8094", Voter: true},
}

// engineHost is a reached host whose engine answered its consensus status.
func engineHost(target, node, role string, term, applied uint64, leader string, servers []engineapi.Server) HostDoc {
	height, age := applied/2, 4.0
	return HostDoc{Target: target, Reachable: true, HostStatus: &deploy.HostStatus{
		Target: target, Healthy: true, Services: []deploy.ServiceState{}, Problems: []string{},
		Reports: deploy.ServiceReports{
			ChainHeight: &height, NewestBlockTime: time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC), NewestBlockAgeSec: &age,
			RaftRole: role, RaftNodeID: node, RaftTerm: &term, RaftLastIndex: &applied, RaftAppliedIndex: &applied,
			RaftLeaderID: leader, RaftServers: servers,
		},
	}}
}

func render(doc StatusDoc) string {
	io, _, _, _ := iostreams.Test()
	var buf bytes.Buffer
	printStatus(&buf, io.OutStyles(), doc, time.Date(2026, 12, 5, 14, 0, 4, 0, time.UTC))
	return buf.String()
}

func hasLines(t *testing.T, out string, want ...string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	for _, w := range want {
		found := false
		for _, l := range lines {
			if l == w {
				found = true
			}
		}
		if !found {
			t.Errorf("no line %q in:\n%s", w, out)
		}
	}
}

// TestStatusShowsTheRaftCluster: each host's chain line has its term,
// applied index and lag behind the leader; the cluster's verdict follows
// the hosts, in the text and in --json, and decides health with them.
func TestStatusShowsTheRaftCluster(t *testing.T) {
	// A split: two leaders in term 7, and a candidate that has given up on
	// both.
	doc := newStatusDoc([]HostDoc{
		engineHost("pi1", "n1", "leader", 7, 500, "n1", three),
		engineHost("pi2", "n2", "leader", 7, 497, "n2", three),
		engineHost("pi3", "n3", "candidate", 8, 480, "", three),
		{Target: "pi4", Error: "dial tcp 127.0.0.1:22: connection refused"},
	})
	out := render(doc)
	hasLines(t, out,
		"chain:      height 250, newest block 4s ago, raft leader, term 7, applied 500, lag 0",
		"chain:      height 248, newest block 4s ago, raft leader, term 7, applied 497, lag 0",
		"chain:      height 240, newest block 4s ago, raft candidate, term 8, applied 480, lag unknown (the engine knows no leader)",
		"raft cluster  UNHEALTHY  3 voters, term 7",
		"voters:     n1 on pi1 (leader), n2 on pi2 (leader), n3 on pi3 (not healthy: its engine is candidate)",
		"quorum:     yes, 2 of 3 voters healthy, 2 needed",
		"leader:     NONE (no engine leads or names a leader in the cluster's term)",
		"chain:      newest block 4s ago (on pi1)",
		"error:      split: pi1 (n1) and pi2 (n2) each say they lead in term 7",
		"error:      the engines disagree on the leader in term 7: pi1 names n1, pi2 names n2",
	)
	if doc.Healthy {
		t.Error("a cluster without a leader is healthy")
	}
	if i, j := strings.Index(out, "pi4  unreachable"), strings.Index(out, "raft cluster"); i < 0 || j < i {
		t.Errorf("the verdict does not follow the hosts:\n%s", out)
	}

	var js struct {
		Hosts []struct {
			Target  string         `json:"target"`
			Reports map[string]any `json:"reports"`
			Unknown map[string]any `json:"unknown"`
		} `json:"hosts"`
		Cluster map[string]any `json:"cluster"`
		Healthy *bool          `json:"healthy"`
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &js); err != nil {
		t.Fatal(err)
	}
	r := js.Hosts[1].Reports
	if r["raft_role"] != "leader" || r["raft_term"] != 7.0 || r["raft_applied_index"] != 497.0 || r["raft_commit_lag"] != 0.0 || r["raft_node_id"] != "n2" || r["raft_leader_id"] != "n2" {
		t.Errorf("pi2's reports in --json: %v", r)
	}
	if _, ok := js.Hosts[2].Reports["raft_commit_lag"]; ok || js.Hosts[2].Unknown["raft_commit_lag"] != "the engine knows no leader" {
		t.Errorf("pi3's lag in --json: %v, unknown %v", js.Hosts[2].Reports["raft_commit_lag"], js.Hosts[2].Unknown)
	}
	c := js.Cluster
	for k, v := range map[string]any{"healthy_voters": 2.0, "quorum_needed": 2.0, "quorum": true, "term": 7.0, "leader": nil, "healthy": false, "newest_block_target": "pi1"} {
		if got, ok := c[k]; !ok || got != v {
			t.Errorf("cluster.%s = %v, want %v", k, got, v)
		}
	}
	if v, _ := c["voters"].([]any); len(v) != 3 {
		t.Errorf("cluster.voters %v", c["voters"])
	}
	if e, _ := c["errors"].([]any); len(e) != 2 {
		t.Errorf("cluster.errors %v", c["errors"])
	}
	if js.Healthy == nil || *js.Healthy {
		t.Errorf("healthy %v with an unhealthy cluster", js.Healthy)
	}

	// A healthy cluster, one voter out: no error, and healthy overall.
	doc = newStatusDoc([]HostDoc{
		engineHost("pi1", "n1", "leader", 7, 500, "n1", three),
		engineHost("pi2", "n2", "follower", 7, 497, "n1", three),
		engineHost("pi3", "n3", "candidate", 9, 470, "", three),
	})
	out = render(doc)
	hasLines(t, out,
		"chain:      height 248, newest block 4s ago, raft follower, term 7, applied 497, lag 3",
		"raft cluster  healthy  3 voters, term 7",
		"voters:     n1 on pi1 (leader), n2 on pi2 (follower), n3 on pi3 (not healthy: its engine is candidate)",
		"quorum:     yes, 2 of 3 voters healthy, 2 needed",
		"leader:     n1 on pi1",
	)
	if !doc.Healthy || strings.Contains(out, "error:") {
		t.Errorf("healthy %v:\n%s", doc.Healthy, out)
	}

	// One host of a healthy cluster, alone (status --target pi1): the
	// others were not read, so the quorum is unknown, not lost.
	doc = newStatusDoc([]HostDoc{engineHost("pi1", "n1", "leader", 7, 500, "n1", three)})
	hasLines(t, render(doc), "quorum:     unknown, 1 of 3 voters healthy, 2 needed; 2 not read (select every host of the cluster to judge it)",
		"voters:     n1 on pi1 (leader), n2 (not read), n3 (not read)")
	if !doc.Healthy {
		t.Error("one host of a healthy cluster read alone is unhealthy")
	}

	// Without quorum: a candidate, and a host whose engine did not answer.
	silent := engineHost("pi3", "", "", 0, 0, "", nil)
	silent.Reports = deploy.ServiceReports{}
	doc = newStatusDoc([]HostDoc{
		engineHost("pi1", "n1", "leader", 7, 500, "n1", three),
		engineHost("pi2", "n2", "candidate", 7, 497, "", three),
		silent,
	})
	hasLines(t, render(doc), "quorum:     NO, 1 of 3 voters healthy, 2 needed")
	if doc.Healthy {
		t.Error("a cluster without quorum is healthy")
	}
}

// TestStatusOfOneVoterHostsHasNoVerdict: hosts each with their own
// one-voter chain get their lag (0, each leads) and no cluster verdict,
// in the text or in --json.
func TestStatusOfOneVoterHostsHasNoVerdict(t *testing.T) {
	one := []engineapi.Server{{ID: "lucid-blockchain-engine", Address: "127.0.0.1:8094", Voter: true}}
	doc := newStatusDoc([]HostDoc{
		engineHost("pi1", "lucid-blockchain-engine", "leader", 2, 900, "lucid-blockchain-engine", one),
		engineHost("pi2", "lucid-blockchain-engine", "leader", 3, 40, "lucid-blockchain-engine", one),
	})
	out := render(doc)
	hasLines(t, out,
		"chain:      height 450, newest block 4s ago, raft leader, term 2, applied 900, lag 0",
		"chain:      height 20, newest block 4s ago, raft leader, term 3, applied 40, lag 0",
	)
	if doc.Cluster != nil || strings.Contains(out, "raft cluster") || !doc.Healthy {
		t.Errorf("cluster %+v, healthy %v:\n%s", doc.Cluster, doc.Healthy, out)
	}
	b, _ := json.Marshal(doc)
	if strings.Contains(string(b), `"cluster"`) {
		t.Errorf("--json has a cluster: %s", b)
	}
}

// TestClusterJSONShape pins `cluster` of `status --target --json` as
// docs/cli.md has it: fields are added, never renamed or removed.
func TestClusterJSONShape(t *testing.T) {
	age := 4.0
	c := deploy.Cluster{
		Voters:        []deploy.Voter{{ID: "n1", Address: "a", Target: "pi1", State: "leader", Healthy: true}, {ID: "n2", Address: "b", Why: "x"}},
		HealthyVoters: 1, QuorumNeeded: 2, Term: 7, Leader: &deploy.ClusterLeader{ID: "n1", Target: "pi1"},
		NewestBlockTime: time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC), NewestBlockAgeSec: &age, NewestBlockTarget: "pi1",
		Errors: []string{"x"},
	}
	want := `{"voters":[{"id":"n1","address":"a","target":"pi1","state":"leader","healthy":true},{"id":"n2","address":"b","healthy":false,"why":"x"}],` +
		`"healthy_voters":1,"unread_voters":0,"quorum_needed":2,"quorum":false,"quorum_lost":false,"term":7,"leader":{"id":"n1","target":"pi1"},` +
		`"newest_block_time":"2026-12-05T14:00:00Z","newest_block_age_seconds":4,"newest_block_target":"pi1","errors":["x"],"healthy":false}`
	if got, err := json.Marshal(c); err != nil || string(got) != want {
		t.Errorf("got  %s (%v)\nwant %s", got, err, want)
	}
}
