package quorum

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// Gate is the quorum check of a command that takes engines down outside a
// deploy (restart, stop, rollback), for each host's deploy.Config.BeforeUp:
// under the host's lock, right before its engine goes down. A host of a
// cluster of lucid.yaml is judged with every host of that cluster,
// including those the command does not act on, which the gate connects to
// for reading; any other host with the hosts acted on.
type Gate struct {
	cfg     *projectconfig.Config
	acting  []string                 // the hosts acted on, in order
	configs map[string]deploy.Config // every host connected, by name
	opened  []*sshx.Client
	token   string
	force   bool
	rep     deploy.Reporter
}

// GateOptions configure a Gate.
type GateOptions struct {
	// Config is lucid.yaml, which says the clusters.
	Config *projectconfig.Config
	// Acting are the connected hosts the command acts on.
	Acting []deploy.Config
	// Dial connects to a host of a cluster that is not acted on.
	Dial func(ctx context.Context, t projectconfig.Target) (*sshx.Client, error)
	// DockerSocket is the Engine's socket on the hosts dialled.
	DockerSocket string
	// OperatorToken reads the engines' consensus status.
	OperatorToken string
	// Force turns a refusal into a warning (--force-quorum).
	Force    bool
	Reporter deploy.Reporter
}

// NewGate connects, at once, to the hosts of the acting hosts' clusters
// that are not acted on; one that cannot be reached is said (a warning
// event) and left out, so its voter counts as not healthy.
func NewGate(ctx context.Context, o GateOptions) *Gate {
	g := &Gate{cfg: o.Config, configs: map[string]deploy.Config{}, token: o.OperatorToken, force: o.Force, rep: o.Reporter}
	for _, c := range o.Acting {
		g.acting = append(g.acting, c.Name)
		g.configs[c.Name] = c
	}
	type other struct {
		name, cluster string
		t             projectconfig.Target
		c             *sshx.Client
		err           error
	}
	var others []*other
	for _, h := range g.acting {
		cn, cl, ok := o.Config.ClusterOf(h)
		if !ok {
			continue
		}
		for _, m := range cl.Hosts {
			if _, ok := g.configs[m]; ok || slices.ContainsFunc(others, func(x *other) bool { return x.name == m }) {
				continue
			}
			x := &other{name: m, cluster: cn}
			x.t, x.err = o.Config.Target(m)
			others = append(others, x)
		}
	}
	var wg sync.WaitGroup
	for _, x := range others {
		if x.err == nil {
			wg.Go(func() { x.c, x.err = o.Dial(ctx, x.t) })
		}
	}
	wg.Wait()
	for _, x := range others {
		if x.err != nil {
			g.rep.Event(deploy.Event{Time: time.Now(), Target: x.name, Step: deploy.StepConnect, Status: deploy.EventWarn,
				Message: fmt.Sprintf("a host of cluster %s, not acted on, not reached to read its voter: %s", x.cluster, firstLine(x.err.Error()))})
			continue
		}
		g.opened = append(g.opened, x.c)
		g.configs[x.name] = deploy.Config{Name: x.name, SSH: x.c, Dir: x.t.Dir, Project: x.t.Project, DockerSocket: o.DockerSocket}
	}
	return g
}

// Close closes the connections the gate opened.
func (g *Gate) Close() {
	for _, c := range g.opened {
		_ = c.Close() // read only
	}
}

// Check is host's check, for its deploy.Config's BeforeUp.
func (g *Gate) Check(host string) func(ctx context.Context) error {
	group := g.acting
	if _, cl, ok := g.cfg.ClusterOf(host); ok {
		group = cl.Hosts
	}
	var configs []deploy.Config
	for _, h := range group {
		if c, ok := g.configs[h]; ok {
			configs = append(configs, c)
		}
	}
	own := g.configs[host]
	r := Readers{
		Own:   func(ctx context.Context) (*engineapi.ConsensusStatus, error) { return ReadOwn(ctx, own, g.token) },
		Group: func(ctx context.Context) []*deploy.HostStatus { return ReadGroup(ctx, configs, g.token) },
	}
	return func(ctx context.Context) error { return Check(ctx, host, r, g.rep, g.force) }
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}
