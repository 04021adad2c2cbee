package deploy

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/quorum"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

// addHook is a voter API that runs onAdd after each AddVoter; with
// hang, the call then waits for its context to end, as a request the
// leader carries out but whose answer never comes.
type addHook struct {
	voterAPI
	onAdd func()
	hang  bool
}

func (h *addHook) AddVoter(ctx context.Context, req engineapi.AddVoterRequest) error {
	err := h.voterAPI.AddVoter(ctx, req)
	h.onAdd()
	if h.hang {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

// TestJoinWaitsForTheQuorumCheck: growing pi1 to pi1 and pi2, where a
// failed deploy of before left pi2's old engine running, as node pi2 with
// no configuration. Its join waits for the quorum check under pi2's lock:
// started at once, it added that old engine, and the check then counted a
// two-voter cluster that needed pi2 and refused the deploy it was part of.
func TestJoinWaitsForTheQuorumCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeCluster([]string{"pi1", "pi2"}, map[string]*deploy.HostStatus{
			"pi1": engineOn("pi1", "pi1", "leader", "pi1", true, servers("pi1")...),
			"pi2": waitingToJoin("pi2"),
		})
		f.engines["pi2"] = []*engineapi.ConsensusStatus{{NodeID: "pi2", State: "follower", RaftAddr: "10.0.0.12:8094", ValidatorKey: "pi2+0123abcd+KEY"}}
		m := f.membership()
		voters := m.voters
		m.voters = func(ctx context.Context, target string) (voterAPI, error) {
			a, err := voters(ctx, target)
			return &addHook{voterAPI: a, onAdd: func() { // the leader's configuration holds pi2 now
				f.mu.Lock()
				defer f.mu.Unlock()
				cfg := servers("pi1", "pi2")
				f.sts["pi1"].Reports.RaftServers = cfg
				f.sts["pi2"] = engineOn("pi2", "pi2", "follower", "pi1", true, cfg...)
				f.engines["pi2"] = []*engineapi.ConsensusStatus{{NodeID: "pi2", State: "follower", LeaderID: "pi1", Servers: cfg}}
			}}, err
		}
		up := make(chan struct{})
		deployHost := func(ctx context.Context) (*deploy.Result, error) {
			synctest.Wait() // a join under way would have added pi2 by now
			r := quorum.Readers{
				Own:   func(ctx context.Context) (*engineapi.ConsensusStatus, error) { return m.engine(ctx, "pi2") },
				Group: func(ctx context.Context) []*deploy.HostStatus { return m.view(ctx).read() },
			}
			// BeforeUp, under pi2's lock.
			if err := quorum.Check(ctx, "pi2", r, m.rep, false); err != nil {
				return nil, err
			}
			close(up)
			return &deploy.Result{Release: "r2"}, nil
		}
		if _, err := m.deployJoining(t.Context(), "pi2", time.Minute, up, deployHost); err != nil {
			t.Fatalf("the deploy with its join: %v; calls %q", err, f.log)
		}
		if want := []string{"pi1: probe 10.0.0.12:8094", "pi1: add pi2 at 10.0.0.12:8094 key pi2+0123abcd+KEY"}; !slices.Equal(f.log, want) {
			t.Errorf("calls %q, want %q", f.log, want)
		}
	})
}
