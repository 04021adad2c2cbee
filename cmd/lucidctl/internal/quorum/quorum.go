// Package quorum keeps lucidctl from taking a Raft voter's engine down when
// its cluster would lose its quorum without it: a deploy, a restart or a
// stop of the engine asks it first, and again under the host's lock.
package quorum

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

// Readers read what the quorum check needs to know.
type Readers struct {
	// Own reads the consensus status of the engine of the host about to
	// go down.
	Own func(ctx context.Context) (*engineapi.ConsensusStatus, error)
	// Group reads every host of the cluster that can be read, as lucidctl
	// status --target does; a host that could not be read is left out.
	Group func(ctx context.Context) []*deploy.HostStatus
}

// ErrLost marks a refusal to take a voter down.
var ErrLost = errors.New("would lose the Raft cluster's quorum")

// Check refuses to take target down when its engine is a voter of
// a Raft cluster of more than one server and the cluster would lose its
// quorum without it: fewer healthy voters other than it than a majority
// of the voters (the cluster's verdict of lucidctl status, from the
// deploy's hosts). A host whose engine is alone in its configuration is
// no concern of it (one read of its engine's consensus status says so),
// nor is one whose engine does not run, nor one whose own voter is already
// down (unhealthy, and its engine answers as neither leader, follower nor
// candidate, as a Raft that shut down does): taking it down loses nothing,
// and deploying may be what repairs it. A host whose engine does not
// answer (a timeout on a loaded Pi) is no all-clear: when the cluster's
// read shows its voter, that voter counts as voting, even if that read
// found it unhealthy too, so a deploy meant to repair a hung engine
// beside another voter down needs force. Only when the host refuses the
// operator's credentials (not yet deployed with this lucidctl's), or no
// read places its voter, is the check not made, and a warning says so.
// force turns the refusal into a warning.
//
// A healthy voter whose host's deploy lock someone else holds does not
// count either: that deploy, rollback or restart may take it down at any
// moment. This is what keeps two operators (two laptops) from taking a
// cluster's quorum down together, each under its own host's lock: each
// takes its lock before it checks under it (deploy.Config.BeforeUp), so
// of two at the same moment at least one sees the other's, and refuses.
func Check(ctx context.Context, target string, r Readers, rep deploy.Reporter, force bool) error {
	event := func(status deploy.EventStatus, msg string) {
		rep.Event(deploy.Event{Time: time.Now(), Target: target, Step: deploy.StepQuorum, Status: status, Message: msg})
	}
	notChecked := func(err error) error {
		event(deploy.EventWarn, "not checked whether taking the host down keeps its Raft cluster's quorum: its engine's consensus status: "+err.Error())
		return nil
	}
	cs, ownErr := r.Own(ctx)
	switch {
	case errors.Is(ownErr, deploy.ErrNotRunning):
		return nil // no engine serving (a first deploy): none to take down
	case ownErr != nil && ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(ownErr, deploy.ErrCredentialsRefused):
		// A host not yet deployed with this lucidctl's credentials (an
		// upgrade under way) refuses the reads this check needs, its own
		// and the others'; refusing would hold the upgrade up for good.
		return notChecked(ownErr)
	case ownErr == nil && (len(cs.Servers) <= 1 || !slices.ContainsFunc(cs.Servers, func(s engineapi.Server) bool { return s.ID == cs.NodeID && s.Voter })):
		return nil
	}
	group := r.Group(ctx)
	c := deploy.ClusterOf(group)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if ownErr != nil {
		// Its engine did not answer (a timeout on a loaded Pi, say). Not
		// seeing is no all-clear: when the cluster's read shows the host's
		// voter, that voter counts as voting, and the others must make a
		// quorum without it.
		v := hostVoter(c, target)
		if v == nil || len(c.Voters) <= 1 {
			return notChecked(ownErr)
		}
		cs = &engineapi.ConsensusStatus{NodeID: v.ID}
	}
	// Why each other host's voter may be going down under another
	// command: its lock is held, or could not be read (not seeing is no
	// all-clear). The target's own lock is this command's, under BeforeUp.
	held := map[string]string{}
	for _, h := range group {
		switch {
		case h.Target == target:
		case h.DeployLock != nil && !h.DeployLock.Ours():
			held[h.Target] = "its host's deploy lock is held by " + h.DeployLock.String()
		case h.Unknown[deploy.FigureDeployLock] != "":
			held[h.Target] = "its host's deploy lock could not be read: " + h.Unknown[deploy.FigureDeployLock]
		}
	}
	var others, unhealthy, busy []string
	needed, voters := len(cs.Servers)/2+1, len(cs.Servers)
	ownHealthy := false
	if c != nil {
		needed, voters = c.QuorumNeeded, len(c.Voters)
		for _, v := range c.Voters {
			switch {
			case v.ID == cs.NodeID:
				// Its engine's own answer above counts over its host's
				// read: an engine that answers as leader, follower or
				// candidate (an election under way, which a loaded
				// cluster holds now and then) takes part in the
				// cluster's votes, whatever its container's healthcheck
				// said (on a loaded Pi one times out now and then) or
				// when its host's status was not read this time. Such a
				// voter must not go as if it were down already.
				ownHealthy = ownErr != nil || v.Healthy || slices.Contains([]string{"leader", "follower", "candidate"}, cs.State)
			case v.Healthy && held[v.Target] != "":
				busy = append(busy, fmt.Sprintf("%s on %s (%s)", v.ID, v.Target, held[v.Target]))
			case v.Healthy:
				others = append(others, v.ID)
			default:
				name := v.ID
				if v.Target != "" {
					name += " on " + v.Target
				}
				unhealthy = append(unhealthy, name+" ("+v.Why+")")
			}
		}
	}
	switch {
	case c != nil && !ownHealthy:
		event(deploy.EventInfo, fmt.Sprintf("its engine (voter %s) is not a healthy voter now, so taking it down loses the cluster nothing", cs.NodeID))
		return nil
	case len(others) >= needed:
		event(deploy.EventOK, fmt.Sprintf("without its engine (voter %s), %d of %d voters stay healthy, %d needed", cs.NodeID, len(others), voters, needed))
		return nil
	}
	healthy := "healthy"
	if len(busy) > 0 {
		healthy = "healthy and not under another command"
	}
	why := fmt.Sprintf("taking %s down (its engine is voter %s) %v: %d other of %d voters %s, %d needed", target, cs.NodeID, ErrLost, len(others), voters, healthy, needed)
	if ownErr != nil {
		why += fmt.Sprintf("; its engine did not answer (%v), so it counts as voting", ownErr)
	}
	switch {
	case c == nil:
		why += "; the cluster's other voters could not be read"
	case len(unhealthy) > 0:
		why += "; not healthy: " + strings.Join(unhealthy, ", ")
	}
	if len(busy) > 0 {
		why += "; may be going down under another command: " + strings.Join(busy, ", ")
	}
	if force {
		event(deploy.EventWarn, why+"; going on (--force-quorum): the chain produces no block until the quorum is back")
		return nil
	}
	event(deploy.EventFail, why)
	return cli.WithHint(fmt.Errorf("%s; nothing was changed on %s: %w", why, target, ErrLost),
		"repair the voters named, or wait for the command that holds a host's lock to end (lucidctl status --target GROUP shows the cluster and each host's lock; a voter no host read answered as needs its host reachable), then try again; --force-quorum takes the engine down anyway, and the chain stops until the quorum is back")
}

// hostVoter is target's voter in c: the one its engine answered as, else
// the one named after it (a cluster's engines take their host's name as
// their Raft id).
func hostVoter(c *deploy.Cluster, target string) *deploy.Voter {
	if c == nil {
		return nil
	}
	for _, byTarget := range []bool{true, false} {
		for i, v := range c.Voters {
			if byTarget && v.Target == target || !byTarget && v.Target == "" && v.ID == target {
				return &c.Voters[i]
			}
		}
	}
	return nil
}

// ReadOwn reads the consensus status of host's engine.
func ReadOwn(ctx context.Context, host deploy.Config, token string) (*engineapi.ConsensusStatus, error) {
	d, err := deploy.New(host)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Consensus(ctx, deploy.StatusOptions{OperatorToken: token})
}

// ReadGroup reads hosts in parallel. A host that cannot be read is left
// out; its voter then counts as not healthy.
func ReadGroup(ctx context.Context, hosts []deploy.Config, token string) []*deploy.HostStatus {
	out, _ := deploy.StatusOf(ctx, hosts, deploy.StatusOptions{OperatorToken: token})
	return slices.DeleteFunc(out, func(h *deploy.HostStatus) bool { return h == nil })
}
