package deploy

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
	"github.com/pickme/lucid/pkg/sshx"
)

// quorumReaders read what the quorum check needs to know.
type quorumReaders struct {
	// own reads the consensus status of the engine of the host about to
	// go down.
	own func(ctx context.Context) (*engineapi.ConsensusStatus, error)
	// group reads every host of the deploy, as lucidctl status --target
	// does; a host that could not be read is left out.
	group func(ctx context.Context) []*deploy.HostStatus
}

// errQuorum marks a refusal to take a voter down.
var errQuorum = errors.New("would lose the Raft cluster's quorum")

// checkQuorum refuses to take target down when its engine is a voter of
// a Raft cluster of more than one server and the cluster would lose its
// quorum without it: fewer healthy voters other than it than a majority
// of the voters (the cluster's verdict of lucidctl status, from the
// deploy's hosts). A host whose engine is alone in its configuration is
// no concern of it (one read of its engine's consensus status says so),
// nor is one whose engine does not run, nor one whose own voter is already unhealthy: taking it down loses
// nothing, and deploying may be what repairs it. When the host's engine
// cannot be read the check cannot be made, and a warning says so. force
// turns the refusal into a warning.
func checkQuorum(ctx context.Context, target string, r quorumReaders, rep deploy.Reporter, force bool) error {
	event := func(status deploy.EventStatus, msg string) {
		rep.Event(deploy.Event{Time: time.Now(), Target: target, Step: deploy.StepQuorum, Status: status, Message: msg})
	}
	cs, err := r.own(ctx)
	switch {
	case errors.Is(err, deploy.ErrNotRunning):
		return nil // no engine serving (a first deploy): none to take down
	case err != nil:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		event(deploy.EventWarn, "not checked whether taking the host down keeps its Raft cluster's quorum: its engine's consensus status: "+err.Error())
		return nil
	}
	if len(cs.Servers) <= 1 || !slices.ContainsFunc(cs.Servers, func(s engineapi.Server) bool { return s.ID == cs.NodeID && s.Voter }) {
		return nil
	}
	c := deploy.ClusterOf(r.group(ctx))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var others, unhealthy []string
	needed, voters := len(cs.Servers)/2+1, len(cs.Servers)
	ownHealthy := false
	if c != nil {
		needed, voters = c.QuorumNeeded, len(c.Voters)
		for _, v := range c.Voters {
			switch {
			case v.ID == cs.NodeID:
				ownHealthy = v.Healthy
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
	why := fmt.Sprintf("taking %s down (its engine is voter %s) %v: %d other of %d voters healthy, %d needed", target, cs.NodeID, errQuorum, len(others), voters, needed)
	switch {
	case c == nil:
		why += "; the cluster's other voters could not be read"
	case len(unhealthy) > 0:
		why += "; not healthy: " + strings.Join(unhealthy, ", ")
	}
	if force {
		event(deploy.EventWarn, why+"; going on (--force-quorum): the chain produces no block until the quorum is back")
		return nil
	}
	event(deploy.EventFail, why)
	return cli.WithHint(fmt.Errorf("%s; nothing was changed on %s: %w", why, target, errQuorum),
		"repair the voters named (lucidctl status --target GROUP shows the cluster; a voter no host of this deploy answered as needs its host in the deploy), then deploy again; --force-quorum takes the host down anyway, and the chain stops until the quorum is back")
}

// deployReaders are the quorum check's readers over the deploy's open
// connections: own reads host i's engine, group every host still
// connected, in parallel.
func deployReaders(i int, configs []deploy.Config, clients []*sshx.Client, token string) quorumReaders {
	opts := deploy.StatusOptions{OperatorToken: token}
	return quorumReaders{
		own: func(ctx context.Context) (*engineapi.ConsensusStatus, error) {
			d, err := deploy.New(configs[i])
			if err != nil {
				return nil, err
			}
			defer d.Close()
			return d.Consensus(ctx, opts)
		},
		group: func(ctx context.Context) []*deploy.HostStatus {
			var connected []deploy.Config
			for j := range clients {
				if clients[j] != nil {
					connected = append(connected, configs[j])
				}
			}
			// A host that cannot be read is left out; its voter then
			// counts as not healthy.
			out, _ := deploy.StatusOf(ctx, connected, opts)
			return slices.DeleteFunc(out, func(h *deploy.HostStatus) bool { return h == nil })
		},
	}
}
