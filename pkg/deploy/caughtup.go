package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/catalog"
)

// Consensus reads the consensus status of the host's engine through the
// connection, as Status does (the same client, the same operator token),
// and nothing else: what a group deploy asks of each host before taking
// one down, and the caught-up gate asks while it waits.
func (d *Deployer) Consensus(ctx context.Context, o StatusOptions) (*engineapi.ConsensusStatus, error) {
	cs, _, err := d.consensus(ctx, o)
	return cs, err
}

// consensus is Consensus, and whether the engine reports its commit index
// (engines before it did not).
func (d *Deployer) consensus(ctx context.Context, o StatusOptions) (_ *engineapi.ConsensusStatus, hasCommit bool, _ error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	list, err := d.h.projectContainers(ctx)
	if err != nil {
		return nil, false, err
	}
	running := byComposeService(list)
	bundle, bundleErr := d.meshBundle(ctx, running)
	c := d.serviceClient(ctx, "engine", running, bundle, bundleErr, o, d.operatorRefusal(o.OperatorToken))
	defer c.close()
	if c.err != nil {
		return nil, false, c.err
	}
	body, err := c.get(ctx, "/api/v1/consensus/status", true)
	if err != nil {
		return nil, false, err
	}
	var cs engineapi.ConsensusStatus
	var has struct {
		CommitIndex *uint64 `json:"commit_index"`
	}
	if err := errors.Join(json.Unmarshal(body, &cs), json.Unmarshal(body, &has)); err != nil {
		return nil, false, fmt.Errorf("%s /api/v1/consensus/status: %w", c.name, err)
	}
	return &cs, has.CommitIndex != nil, nil
}

// PortOffset is the offset at which the host's stack publishes the
// catalog's ports on its loopback (lucidctl render --port-offset; 0 on a
// Pi), read from the port its engine's container publishes: what reaching
// the services by the catalog's ports through the connection needs.
func (d *Deployer) PortOffset(ctx context.Context) (int, error) {
	list, err := d.h.projectContainers(ctx)
	if err != nil {
		return 0, err
	}
	svc, _ := catalog.Lookup("engine")
	c, ok := byComposeService(list)[svc.Container]
	if !ok || c.State != "running" {
		return 0, fmt.Errorf("engine %w", ErrNotRunning)
	}
	for _, p := range c.Ports {
		if int(p.PrivatePort) == svc.Port && p.PublicPort != 0 && p.Type == "tcp" {
			return int(p.PublicPort) - svc.Port, nil
		}
	}
	return 0, errors.New("engine publishes no port on the host")
}

// byComposeService maps the project's containers (one-off runs left out)
// by their compose service, which is the container's name.
func byComposeService(list []container.Summary) map[string]container.Summary {
	m := map[string]container.Summary{}
	for _, c := range list {
		if c.Labels["com.docker.compose.oneoff"] == "True" {
			continue
		}
		m[c.Labels[composeServiceLabel]] = c
	}
	return m
}

// caughtUpPoll is how often the caught-up gate asks the engine again.
const caughtUpPoll = time.Second

// errNoCommitIndex is an engine too old to report its commit index: the
// caught-up gate cannot judge it, and lets it pass.
var errNoCommitIndex = errors.New("this engine does not report its commit index")

// unjudgedError is a read the caught-up gate cannot judge by and that
// asking again will not change (the engine refuses the operator token):
// the gate lets the engine pass, and says why.
type unjudgedError struct{ err error }

func (e *unjudgedError) Error() string { return e.err.Error() }
func (e *unjudgedError) Unwrap() error { return e.err }

// caughtUpOutcome is how the caught-up gate ended without failing.
type caughtUpOutcome int

const (
	// caughtUp: the engine is a member of a cluster and has caught up.
	caughtUp caughtUpOutcome = iota
	// alone: the engine is the only server of its configuration (a single
	// Pi): there is nothing to catch up with.
	alone
	// unjudged: the engine cannot say (no commit index).
	unjudged
)

// waitCaughtUp waits until the engine that read asks, when it is a member
// of a Raft configuration of more than one server, knows its leader and
// has applied everything the cluster committed: one read with its applied
// index at its commit index, confirmed by the next (at least caughtUpPoll
// later) having applied at least that much, so that neither the moment
// after a restart, when the leader's first heartbeat names it before any
// commit index arrives, nor the few entries a busy follower is always
// behind, decides. progress hears each change of the engine's figures.
// After deadline it fails with the engine's last state, leader, applied
// and commit index, or the last read's error.
func waitCaughtUp(ctx context.Context, read func(context.Context) (*engineapi.ConsensusStatus, error), deadline time.Time, progress func(string)) (caughtUpOutcome, string, error) {
	var prev *engineapi.ConsensusStatus // the last read that had caught up
	var last *engineapi.ConsensusStatus
	var lastErr error
	lastSaid := ""
	for {
		cs, err := read(ctx)
		var uj *unjudgedError
		switch {
		case errors.As(err, &uj):
			return unjudged, err.Error(), nil
		case err != nil:
			if ctx.Err() != nil {
				return 0, "", ctx.Err()
			}
			lastErr, prev = err, nil
		case len(cs.Servers) <= 1:
			return alone, "the engine is alone in its Raft configuration", nil
		default:
			last, lastErr = cs, nil
			if said := describeConsensus(cs); said != lastSaid {
				progress(said)
				lastSaid = said
			}
			known := (cs.State == "leader" || cs.State == "follower") && cs.LeaderID != "" && cs.CommitIndex > 0
			switch {
			case !known:
				prev = nil
			case prev != nil && cs.AppliedIndex >= prev.CommitIndex:
				return caughtUp, describeConsensus(cs), nil
			case cs.AppliedIndex >= cs.CommitIndex:
				prev = cs
			}
		}
		if !time.Now().Before(deadline) {
			if last == nil || lastErr != nil {
				return 0, "", fmt.Errorf("the engine's consensus status could not be read: %w", lastErr)
			}
			return 0, "", fmt.Errorf("the engine did not catch up with its Raft cluster of %d servers in time: %s", len(last.Servers), describeConsensus(last))
		}
		t := time.NewTimer(min(caughtUpPoll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, "", ctx.Err()
		case <-t.C:
		}
	}
}

// describeConsensus says where an engine stands in words.
func describeConsensus(cs *engineapi.ConsensusStatus) string {
	leader := "no known leader"
	switch {
	case cs.State == "leader":
		leader = "the leader"
	case cs.LeaderID != "":
		leader = "leader " + cs.LeaderID
	}
	return fmt.Sprintf("%s %s (%s), term %d, applied %d of %d committed", cs.State, cs.NodeID, leader, cs.Term, cs.AppliedIndex, cs.CommitIndex)
}

// caughtUpGate is the gate's last step for an engine of a Raft cluster:
// waitCaughtUp until deadline, reported as StepCaughtUp. An engine alone
// in its configuration passes at once (one event says so); one that
// cannot be asked for want of the operator token, or refuses it, passes
// with a warning, since a deploy that went well without the gate must not
// be rolled back for it.
func (d *Deployer) caughtUpGate(ctx context.Context, release string, deadline time.Time) error {
	if d.cfg.OperatorToken == "" {
		d.emit(StepCaughtUp, EventWarn, "skipped: no operator token (LUCID_OPERATOR_TOKEN) to read the engine's consensus status with, so whether it is a Raft cluster's member and caught up is not known")
		return nil
	}
	read := func(ctx context.Context) (*engineapi.ConsensusStatus, error) {
		cs, hasCommit, err := d.consensus(ctx, StatusOptions{OperatorToken: d.cfg.OperatorToken})
		var se *statusError
		switch {
		case err == nil && !hasCommit && len(cs.Servers) > 1:
			err = &unjudgedError{errNoCommitIndex}
		case errors.As(err, &se) && (se.code == http.StatusUnauthorized || se.code == http.StatusForbidden):
			err = &unjudgedError{err}
		}
		return cs, err
	}
	started := false
	progress := func(m string) {
		if !started {
			d.emit(StepCaughtUp, EventStart, "the engine is in a Raft cluster: waiting for a known leader and everything committed applied, until "+deadline.Format(time.TimeOnly))
			started = true
		}
		d.emit(StepCaughtUp, EventInfo, m)
	}
	outcome, said, err := waitCaughtUp(ctx, read, deadline, progress)
	switch {
	case err != nil:
		gf := &GateFailure{Release: release, Smoke: err.Error()}
		d.emit(StepCaughtUp, EventFail, gf.Smoke)
		return gf
	case outcome == alone:
		d.emit(StepCaughtUp, EventInfo, "skipped: "+said)
	case outcome == unjudged:
		d.emit(StepCaughtUp, EventWarn, "skipped: "+said)
	default:
		d.emit(StepCaughtUp, EventOK, said)
	}
	return nil
}
