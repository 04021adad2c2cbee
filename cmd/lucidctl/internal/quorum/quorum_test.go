package quorum

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

var threeVoters = []engineapi.Server{{ID: "n1", Address: "10.0.0.11:8094", Voter: true}, {ID: "n2", Address: "10.0.0.12:8094", Voter: true}, {ID: "n3", Address: "10.0.0.13:8094", Voter: true}}

// voterOn is a host whose engine answered as node in the three-voter
// cluster led by n1.
func voterOn(target, node, role string, healthy bool) *deploy.HostStatus {
	term, applied := uint64(3), uint64(120)
	return &deploy.HostStatus{Target: target, Healthy: healthy, Reports: deploy.ServiceReports{
		RaftRole: role, RaftNodeID: node, RaftTerm: &term, RaftAppliedIndex: &applied, RaftLastIndex: &applied, RaftLeaderID: "n1", RaftServers: threeVoters,
	}}
}

// quorumCase reads own as the host's engine and hosts as the group; it
// counts the group reads.
func quorumCase(own *engineapi.ConsensusStatus, ownErr error, hosts ...*deploy.HostStatus) (Readers, *int) {
	reads := 0
	return Readers{
		Own:   func(context.Context) (*engineapi.ConsensusStatus, error) { return own, ownErr },
		Group: func(context.Context) []*deploy.HostStatus { reads++; return hosts },
	}, &reads
}

// TestCheckQuorum: a voter of three goes down only while the two others
// are healthy; one other down refuses (naming it, and with a hint), unless
// forced; a single host, or one whose engine cannot be read, is not held
// up, and a single host costs no read of the group.
func TestCheckQuorum(t *testing.T) {
	ctx := context.Background()
	n2 := &engineapi.ConsensusStatus{NodeID: "n2", State: "follower", LeaderID: "n1", Servers: threeVoters}
	var events []deploy.Event
	rep := deploy.ReporterFunc(func(e deploy.Event) { events = append(events, e) })

	t.Run("all up", func(t *testing.T) {
		events = nil
		r, _ := quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", true), voterOn("pi3", "n3", "follower", true))
		if err := Check(ctx, "pi2", r, rep, false); err != nil {
			t.Fatal(err)
		}
		if len(events) != 1 || events[0].Status != deploy.EventOK || events[0].Message != "without its engine (voter n2), 2 of 3 voters stay healthy, 2 needed" {
			t.Errorf("events %+v", events)
		}
	})
	t.Run("another down", func(t *testing.T) {
		events = nil
		r, _ := quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", true), voterOn("pi3", "n3", "follower", false))
		err := Check(ctx, "pi2", r, rep, false)
		if !errors.Is(err, ErrLost) {
			t.Fatalf("err %v, want a refusal", err)
		}
		for _, want := range []string{"taking pi2 down (its engine is voter n2) would lose the Raft cluster's quorum: 1 other of 3 voters healthy, 2 needed", "not healthy: n3 on pi3 (its host is unhealthy)", "nothing was changed on pi2"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if h := cli.Hint(err); !strings.Contains(h, "--force-quorum") {
			t.Errorf("hint %q", h)
		}
		if len(events) != 1 || events[0].Status != deploy.EventFail || events[0].Step != deploy.StepQuorum {
			t.Errorf("events %+v", events)
		}

		// A voter no host of the deploy answered as counts as down.
		r, _ = quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", true))
		if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "n3 (no host read answered as it)") {
			t.Errorf("with n3 not read: %v", err)
		}

		events = nil
		r, _ = quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", true), voterOn("pi3", "n3", "follower", false))
		if err := Check(ctx, "pi2", r, rep, true); err != nil {
			t.Fatalf("forced: %v", err)
		}
		if len(events) != 1 || events[0].Status != deploy.EventWarn || !strings.Contains(events[0].Message, "--force-quorum") {
			t.Errorf("forced: events %+v", events)
		}
	})
	t.Run("another host locked", func(t *testing.T) {
		// Another operator deploys pi3: its voter is healthy now, but
		// may go down at any moment, so pi2 may not go too. Its own
		// host's lock (this command's, under BeforeUp) is no concern.
		since := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
		pi3 := voterOn("pi3", "n3", "follower", true)
		pi3.DeployLock = &deploy.LockHolder{User: "bob", Host: "laptop2", PID: 4242, Since: since, Expires: since.Add(30 * time.Minute)}
		pi2 := voterOn("pi2", "n2", "follower", true)
		pi2.DeployLock = &deploy.LockHolder{User: "alice", Host: "laptop1", PID: 7, Since: since}
		r, _ := quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), pi2, pi3)
		err := Check(ctx, "pi2", r, rep, false)
		if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "n3 on pi3 (its host's deploy lock is held by bob@laptop2 (pid 4242) since 2026-12-07T10:00:00Z)") {
			t.Fatalf("with pi3's lock held by another: %v", err)
		}
		if h := cli.Hint(err); !strings.Contains(h, "wait for the command that holds a host's lock") {
			t.Errorf("hint %q", h)
		}
		if !strings.Contains(err.Error(), "1 other of 3 voters healthy and not under another command, 2 needed") {
			t.Errorf("the count: %v", err)
		}
		pi3.DeployLock = nil
		if err := Check(ctx, "pi2", r, rep, false); err != nil {
			t.Errorf("with only its own host locked: %v", err)
		}
		// A lock that could not be read is no all-clear.
		pi3.Unknown = map[string]string{deploy.FigureDeployLock: "the lock file holds no lock"}
		if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "n3 on pi3 (its host's deploy lock could not be read: the lock file holds no lock)") {
			t.Errorf("with pi3's lock unread: %v", err)
		}
		pi3.Unknown = nil
	})
	t.Run("its own voter already down", func(t *testing.T) {
		shutdown := &engineapi.ConsensusStatus{NodeID: "n2", State: "shutdown", Servers: threeVoters}
		r, _ := quorumCase(shutdown, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "shutdown", true), voterOn("pi3", "n3", "follower", false))
		if err := Check(ctx, "pi2", r, rep, false); err != nil {
			t.Fatalf("deploying the broken voter is refused: %v", err)
		}
		// A candidate is in an election, not down: with n3 down, taking
		// it down loses the quorum.
		candidate := &engineapi.ConsensusStatus{NodeID: "n2", State: "candidate", Servers: threeVoters}
		r, _ = quorumCase(candidate, nil, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "candidate", true), voterOn("pi3", "n3", "follower", false))
		if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) {
			t.Errorf("a candidate taken down with n3 down: %v, want a refusal", err)
		}
	})
	t.Run("its own host not read", func(t *testing.T) {
		// Its engine answered as a follower, but its host's status did
		// not come back: it is a working voter, and with n3 down taking
		// it down loses the quorum.
		r, _ := quorumCase(n2, nil, voterOn("pi1", "n1", "leader", true), &deploy.HostStatus{Target: "pi2", Healthy: true}, voterOn("pi3", "n3", "follower", false))
		if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) {
			t.Errorf("a working voter whose host was not read, with n3 down: %v, want a refusal", err)
		}
		shutdown := &engineapi.ConsensusStatus{NodeID: "n2", State: "shutdown", Servers: threeVoters}
		r, _ = quorumCase(shutdown, nil, voterOn("pi1", "n1", "leader", true), &deploy.HostStatus{Target: "pi2", Healthy: true}, voterOn("pi3", "n3", "follower", false))
		if err := Check(ctx, "pi2", r, rep, false); err != nil {
			t.Errorf("a voter whose Raft shut down, host not read: %v, want it let go", err)
		}
	})
	t.Run("single host", func(t *testing.T) {
		events = nil
		single := &engineapi.ConsensusStatus{NodeID: "n1", State: "leader", LeaderID: "n1", Servers: threeVoters[:1]}
		r, reads := quorumCase(single, nil)
		if err := Check(ctx, "pi", r, rep, false); err != nil || *reads != 0 || len(events) != 0 {
			t.Fatalf("single host: %v, %d group reads, events %+v", err, *reads, events)
		}
	})
	t.Run("engine not read", func(t *testing.T) {
		events = nil
		r, reads := quorumCase(nil, fmt.Errorf("engine /api/v1/consensus/status: 403 Forbidden: %w", deploy.ErrCredentialsRefused))
		if err := Check(ctx, "pi", r, rep, false); err != nil || *reads != 0 {
			t.Fatalf("%v, %d group reads", err, *reads)
		}
		if len(events) != 1 || events[0].Status != deploy.EventWarn || !strings.Contains(events[0].Message, "403 Forbidden") {
			t.Errorf("events %+v", events)
		}
		// No engine running (a first deploy): nothing to say.
		events = nil
		r, _ = quorumCase(nil, fmt.Errorf("engine %w", deploy.ErrNotRunning))
		if err := Check(ctx, "pi", r, rep, false); err != nil || len(events) != 0 {
			t.Fatalf("%v, events %+v", err, events)
		}
	})
}

// TestQuorumCountsEngines: a voter whose engine serves counts, though
// another container of its host is unhealthy: with pi3 down, taking pi2's
// working engine down would stop the chain, and the deploy says so.
func TestQuorumCountsEngines(t *testing.T) {
	ctx := context.Background()
	withEngine := func(h *deploy.HostStatus, engineHealth string) *deploy.HostStatus {
		h.Services = []deploy.ServiceState{{Service: "engine", State: "running", Health: engineHealth}, {Service: "gateway", State: "running", Health: "unhealthy"}}
		return h
	}
	n2 := &engineapi.ConsensusStatus{NodeID: "n2", State: "follower", LeaderID: "n1", Servers: threeVoters}
	var events []deploy.Event
	rep := deploy.ReporterFunc(func(e deploy.Event) { events = append(events, e) })
	r, _ := quorumCase(n2, nil,
		withEngine(voterOn("pi1", "n1", "leader", true), "healthy"),
		withEngine(voterOn("pi2", "n2", "follower", false), "healthy"), // its gateway is sick
		withEngine(voterOn("pi3", "n3", "follower", false), "unhealthy"))
	if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) {
		t.Fatalf("pi2's working engine taken down with pi3's engine down: %v (events %+v)", err, events)
	}
	if err := Check(ctx, "pi2", r, rep, false); err == nil || !strings.Contains(err.Error(), "n3 on pi3 (its engine container is unhealthy)") {
		t.Errorf("the refusal names why n3 does not count: %v", err)
	}

	// pi2's own engine container failed its healthcheck (one timed out
	// on a loaded Pi), but the engine answers as a follower: it votes,
	// and taking it down with pi3's engine down stops the chain.
	r, _ = quorumCase(n2, nil,
		withEngine(voterOn("pi1", "n1", "leader", true), "healthy"),
		withEngine(voterOn("pi2", "n2", "follower", false), "unhealthy"),
		withEngine(voterOn("pi3", "n3", "follower", false), "unhealthy"))
	if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) {
		t.Errorf("pi2's engine, unhealthy by its container but answering as a follower, taken down with pi3's engine down: %v", err)
	}
}

// TestCheckQuorumWhenItsEngineDoesNotAnswer: an engine that times out
// (a loaded Pi) is no all-clear. When the cluster's read shows the host's
// voter, it counts as voting and the others must make a quorum without
// it; only when no read places it is the check skipped, with a warning.
func TestCheckQuorumWhenItsEngineDoesNotAnswer(t *testing.T) {
	ctx := context.Background()
	slow := errors.New("engine /api/v1/consensus/status: context deadline exceeded")
	var events []deploy.Event
	rep := deploy.ReporterFunc(func(e deploy.Event) { events = append(events, e) })

	// pi3 down: taking pi2 down too leaves one voter of three.
	r, _ := quorumCase(nil, slow, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", true), voterOn("pi3", "n3", "follower", false))
	err := Check(ctx, "pi2", r, rep, false)
	if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "its engine did not answer (engine /api/v1/consensus/status: context deadline exceeded), so it counts as voting") {
		t.Errorf("pi3 down, pi2's engine silent: %v", err)
	}

	// Its own host's read did not answer either (its voter unhealthy, no
	// host named for it): found by its id, the host's name, and counted
	// as voting all the same.
	named := func(id string) *deploy.HostStatus {
		h := voterOn("pi1", "n1", "leader", true)
		servers := slices.Clone(h.Reports.RaftServers)
		for i := range servers {
			if servers[i].ID == "n2" {
				servers[i].ID = id
			}
		}
		h.Reports.RaftServers = servers
		return h
	}
	r, _ = quorumCase(nil, slow, named("pi2"))
	if err := Check(ctx, "pi2", r, rep, false); !errors.Is(err, ErrLost) {
		t.Errorf("pi2's voter known only by its id: %v", err)
	}

	// The others make a quorum without it: on.
	events = nil
	r, _ = quorumCase(nil, slow, voterOn("pi1", "n1", "leader", true), voterOn("pi2", "n2", "follower", false), voterOn("pi3", "n3", "follower", true))
	if err := Check(ctx, "pi2", r, rep, false); err != nil || len(events) != 1 || events[0].Status != deploy.EventOK {
		t.Errorf("two others healthy: %v, events %+v", err, events)
	}

	// No read places the host's voter: not checked, and said.
	events = nil
	r, _ = quorumCase(nil, slow)
	if err := Check(ctx, "pi2", r, rep, false); err != nil || len(events) != 1 || events[0].Status != deploy.EventWarn || !strings.Contains(events[0].Message, "context deadline exceeded") {
		t.Errorf("nothing read: %v, events %+v", err, events)
	}
}
