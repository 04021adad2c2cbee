package deploy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/pkg/api/engineapi"
)

var threeServers = []engineapi.Server{{ID: "n1", Voter: true}, {ID: "n2", Voter: true}, {ID: "n3", Voter: true}}

// engineReads answers each read with the next status (the last one
// again once they run out), and counts the reads.
type engineReads struct {
	answers []*engineapi.ConsensusStatus
	errs    []error
	n       int
}

func (r *engineReads) read(context.Context) (*engineapi.ConsensusStatus, error) {
	i := min(r.n, len(r.answers)-1)
	r.n++
	if i < len(r.errs) && r.errs[i] != nil {
		return nil, r.errs[i]
	}
	return r.answers[i], nil
}

func follower(applied, commit uint64, leader string) *engineapi.ConsensusStatus {
	return &engineapi.ConsensusStatus{NodeID: "n2", State: "follower", LeaderID: leader, Term: 4, AppliedIndex: applied, CommitIndex: commit, Servers: threeServers}
}

// TestWaitCaughtUp: the gate passes once the engine has applied what was
// committed (confirmed by the next read), fails at the deadline saying
// where the engine stands, and is no gate for an engine alone.
func TestWaitCaughtUp(t *testing.T) {
	t.Run("catches up", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			r := &engineReads{answers: []*engineapi.ConsensusStatus{
				// Just restarted: a heartbeat named the leader, no commit
				// index yet; it must not count as caught up.
				follower(90, 0, "n1"),
				follower(95, 130, "n1"),
				follower(130, 130, "n1"),
				// Busy: more committed meanwhile, but everything of the
				// read before is applied.
				follower(131, 133, "n1"),
			}}
			var said []string
			outcome, msg, err := waitCaughtUp(t.Context(), r.read, start.Add(time.Minute), func(m string) { said = append(said, m) })
			if err != nil || outcome != caughtUp {
				t.Fatalf("outcome %v, %v", outcome, err)
			}
			if r.n != 4 || time.Since(start) != 3*caughtUpPoll {
				t.Errorf("passed after %d reads and %s, want 4 reads and %s", r.n, time.Since(start), 3*caughtUpPoll)
			}
			if !strings.Contains(msg, "applied 131 of 133 committed") || len(said) != 4 {
				t.Errorf("message %q, progress %q", msg, said)
			}
		})
	})
	t.Run("a leader caught up at once", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			leader := &engineapi.ConsensusStatus{NodeID: "n1", State: "leader", LeaderID: "n1", Term: 4, AppliedIndex: 130, CommitIndex: 130, Servers: threeServers}
			r := &engineReads{answers: []*engineapi.ConsensusStatus{leader}}
			if outcome, _, err := waitCaughtUp(t.Context(), r.read, time.Now().Add(time.Minute), func(string) {}); err != nil || outcome != caughtUp || r.n != 2 {
				t.Fatalf("outcome %v after %d reads, %v", outcome, r.n, err)
			}
		})
	})
	t.Run("times out", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			// Behind and never catching up, then without a leader.
			r := &engineReads{answers: []*engineapi.ConsensusStatus{follower(10, 130, "n1"), follower(11, 140, "n1"), follower(12, 140, ""),
				{NodeID: "n2", State: "candidate", Term: 5, AppliedIndex: 12, CommitIndex: 140, Servers: threeServers}}}
			_, _, err := waitCaughtUp(t.Context(), r.read, start.Add(30*time.Second), func(string) {})
			if err == nil {
				t.Fatal("the gate passed an engine that never caught up")
			}
			if time.Since(start) != 30*time.Second {
				t.Errorf("failed after %s, want at the deadline (30s)", time.Since(start))
			}
			want := "the engine did not catch up with its Raft cluster of 3 servers in time: candidate n2 (no known leader), term 5, applied 12 of 140 committed"
			if err.Error() != want {
				t.Errorf("error %q,\nwant %q", err, want)
			}
		})
	})
	t.Run("unreadable", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := &engineReads{answers: []*engineapi.ConsensusStatus{nil}, errs: []error{errors.New("engine /api/v1/consensus/status: connection refused")}}
			_, _, err := waitCaughtUp(t.Context(), r.read, time.Now().Add(10*time.Second), func(string) {})
			if err == nil || !strings.Contains(err.Error(), "could not be read: engine /api/v1/consensus/status: connection refused") {
				t.Fatalf("error %v", err)
			}
		})
	})
	t.Run("alone", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			single := &engineapi.ConsensusStatus{NodeID: "n1", State: "leader", LeaderID: "n1", AppliedIndex: 7, CommitIndex: 9, Servers: threeServers[:1]}
			r := &engineReads{answers: []*engineapi.ConsensusStatus{single}}
			var said []string
			outcome, _, err := waitCaughtUp(t.Context(), r.read, start.Add(time.Minute), func(m string) { said = append(said, m) })
			if err != nil || outcome != alone || r.n != 1 || time.Since(start) != 0 || len(said) != 0 {
				t.Fatalf("outcome %v after %d reads and %s, progress %q, %v", outcome, r.n, time.Since(start), said, err)
			}
		})
	})
	t.Run("cannot judge", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			r := &engineReads{answers: []*engineapi.ConsensusStatus{nil}, errs: []error{&unjudgedError{errNoCommitIndex}}}
			if outcome, _, err := waitCaughtUp(t.Context(), r.read, time.Now().Add(time.Minute), func(string) {}); err != nil || outcome != unjudged {
				t.Fatalf("outcome %v, %v", outcome, err)
			}
		})
	})
}
