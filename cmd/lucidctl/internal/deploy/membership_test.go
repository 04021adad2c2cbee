package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/build"
	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/imagebuild"
)

// The hosts' statuses the membership decisions read, as deploy.StatusOf
// gives them.

// neverDeployed is a host with no release and no engine container.
func neverDeployed(target string) *deploy.HostStatus {
	return &deploy.HostStatus{Target: target, Services: []deploy.ServiceState{{Service: "engine", State: "missing"}},
		Unknown: map[string]string{deploy.FigureRaftRole: "engine does not run"}}
}

// lockedBy is h with its deploy lock held by another operator's deploy.
func lockedBy(h *deploy.HostStatus, user string) *deploy.HostStatus {
	since := time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC)
	h.DeployLock = &deploy.LockHolder{User: user, Host: "laptop-b", PID: 42, Since: since, Expires: since.Add(30 * time.Minute)}
	return h
}

// lockUnread is h with its deploy lock not read.
func lockUnread(h *deploy.HostStatus) *deploy.HostStatus {
	h.Unknown[deploy.FigureDeployLock] = "cat: permission denied"
	return h
}

// unreadEngine is a host whose engine runs, but whose consensus status
// was not read (why).
func unreadEngine(target, why string) *deploy.HostStatus {
	return &deploy.HostStatus{Target: target, Release: &deploy.Release{ID: "r1"}, Healthy: true,
		Services: []deploy.ServiceState{{Service: "engine", State: "running", Health: "healthy"}},
		Unknown:  map[string]string{deploy.FigureRaftRole: why}}
}

// staleRelease is a host whose services refused the operator's
// credentials because its release was rendered before per-host ones; its
// engine env file names the engine node ("" for a single Pi's release).
func staleRelease(target, node string) *deploy.HostStatus {
	h := unreadEngine(target, "engine /api/v1/consensus/status: 403 Forbidden ("+target+" runs a release rendered before per-host operator credentials)")
	h.StaleCredentials = &deploy.StaleCredentials{Release: "r1", EngineNode: node}
	return h
}

// engineOn is a host whose engine answered as node, in role, with its
// configuration servers and leader.
func engineOn(target, node, role, leader string, healthy bool, servers ...engineapi.Server) *deploy.HostStatus {
	term, applied := uint64(3), uint64(120)
	return &deploy.HostStatus{Target: target, Release: &deploy.Release{ID: "r1"}, Healthy: healthy,
		Services: []deploy.ServiceState{{Service: "engine", State: "running", Health: "healthy"}},
		Reports: deploy.ServiceReports{RaftRole: role, RaftNodeID: node, RaftTerm: &term, RaftAppliedIndex: &applied, RaftLastIndex: &applied,
			RaftLeaderID: leader, RaftServers: servers}}
}

// down makes h a host whose engine fails its healthcheck.
func down(h *deploy.HostStatus) {
	h.Healthy = false
	for i := range h.Services {
		if h.Services[i].Service == "engine" {
			h.Services[i].Health = "unhealthy"
		}
	}
}

// waitingToJoin is a host whose engine runs without a configuration.
func waitingToJoin(target string) *deploy.HostStatus {
	return engineOn(target, target, "follower", "", false)
}

func servers(ids ...string) []engineapi.Server {
	var out []engineapi.Server
	for i, id := range ids {
		out = append(out, engineapi.Server{ID: id, Address: fmt.Sprintf("10.0.0.%d:8094", 11+i), Voter: true})
	}
	return out
}

// viewOf reads hosts as given; a host without a status could not be
// reached.
func viewOf(hosts []string, sts map[string]*deploy.HostStatus) *clusterView {
	statuses, errs := make([]*deploy.HostStatus, len(hosts)), make([]error, len(hosts))
	for i, h := range hosts {
		if st, ok := sts[h]; ok {
			statuses[i] = st
		} else {
			errs[i] = errors.New("not reached: dial tcp 10.0.0.13:22: i/o timeout")
		}
	}
	return newClusterView("home", hosts, statuses, errs)
}

var three = []string{"pi1", "pi2", "pi3"}

// healthyThree is the cluster pi1, pi2, pi3 led by pi1, every voter up.
func healthyThree() map[string]*deploy.HostStatus {
	cfg := servers("pi1", "pi2", "pi3")
	return map[string]*deploy.HostStatus{
		"pi1": engineOn("pi1", "pi1", "leader", "pi1", true, cfg...),
		"pi2": engineOn("pi2", "pi2", "follower", "pi1", true, cfg...),
		"pi3": engineOn("pi3", "pi3", "follower", "pi1", true, cfg...),
	}
}

// TestDecideBootstrap: the first host deployed starts the cluster only
// when every other host was read and none holds a Raft configuration; a
// host that could not be read makes it unknown, and then nothing starts a
// chain beside one that may exist.
func TestDecideBootstrap(t *testing.T) {
	tests := []struct {
		name  string
		hosts map[string]*deploy.HostStatus
		want  bool
		// wantErr are words the refusal must say; none: no refusal.
		wantErr []string
	}{
		{name: "a first deploy", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")}, want: true},
		{name: "engines waiting to join are no chain", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": waitingToJoin("pi2"), "pi3": waitingToJoin("pi3")}, want: true},
		{name: "the first's own state does not matter", hosts: map[string]*deploy.HostStatus{"pi1": unreadEngine("pi1", "engine does not run"), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")}, want: true},
		{name: "the cluster runs", hosts: healthyThree(), want: false},
		{name: "a single Pi grows", hosts: map[string]*deploy.HostStatus{"pi1": engineOn("pi1", "pi1", "leader", "pi1", true, servers("pi1")...), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")}, want: false},
		{name: "another holds a chain and the rest are not read", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": engineOn("pi2", "pi2", "leader", "pi2", true, servers("pi2")...)}, want: false},
		{name: "a host not reached", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2")},
			wantErr: []string{"pi1 would start a new chain", "pi3 (not reached: dial tcp 10.0.0.13:22: i/o timeout)", "nothing was changed"}},
		{name: "an engine not read", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": unreadEngine("pi2", "no operator token (LUCID_OPERATOR_TOKEN) to ask engine with"), "pi3": neverDeployed("pi3")},
			wantErr: []string{"pi2 (no operator token (LUCID_OPERATOR_TOKEN) to ask engine with)"}},
		{name: "an engine that was deployed and does not run", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2"), "pi3": unreadEngine("pi3", "engine does not run")},
			wantErr: []string{"pi3 (engine does not run)"}},
		{name: "another operator's deploy holds a host", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": lockedBy(neverDeployed("pi2"), "bob"), "pi3": neverDeployed("pi3")},
			wantErr: []string{"pi2 (holds no chain yet, but bob@laptop-b (pid 42) since", "holds its deploy lock, and may be starting the cluster there)", "nothing was changed"}},
		{name: "a host's lock not read", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2"), "pi3": lockUnread(neverDeployed("pi3"))},
			wantErr: []string{"pi3 (holds no chain yet, but whether another deploy holds its lock was not read: cat: permission denied)"}},
		{name: "the first's own lock does not matter", hosts: map[string]*deploy.HostStatus{"pi1": lockedBy(neverDeployed("pi1"), "alice"), "pi2": neverDeployed("pi2"), "pi3": waitingToJoin("pi3")}, want: true},
		{name: "two chains", hosts: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": engineOn("pi2", "pi2", "leader", "pi2", true, servers("pi2")...), "pi3": engineOn("pi3", "pi3", "leader", "pi3", true, servers("pi3")...)},
			wantErr: []string{"pi2 (node pi2), pi3 (node pi3) each hold a chain of their own"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decideBootstrap(viewOf(three, tt.hosts), "pi1")
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("bootstrap %v, want a refusal", got)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("%q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("bootstrap %v, %v; want %v", got, err, tt.want)
			}
		})
	}
	// The refusal says what to do.
	_, err := decideBootstrap(viewOf(three, map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2")}), "pi1")
	if !errors.Is(err, errCannotBootstrap) || !strings.Contains(cli.Hint(err), "deploy when every host of the cluster answers") {
		t.Errorf("refusal %v, hint %q", err, cli.Hint(err))
	}
}

// TestStartingHostChecksUnderItsLock: the host that starts a cluster
// reads the others again under its own lock, right before its engine
// starts: another operator's deploy that has since started a chain, or
// holds another host's lock, stops it; so does a host not read. The
// other hosts' turns read nothing more.
func TestStartingHostChecksUnderItsLock(t *testing.T) {
	fresh := func() map[string]*deploy.HostStatus {
		return map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")}
	}
	tests := []struct {
		name string
		now  map[string]*deploy.HostStatus
		// wantErr are words the refusal must say; none: it starts.
		wantErr []string
	}{
		{name: "nothing changed", now: fresh()},
		{name: "another deploy holds a host", now: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": lockedBy(neverDeployed("pi2"), "bob"), "pi3": neverDeployed("pi3")},
			wantErr: []string{"pi1 would start a new chain", "bob@laptop-b", "nothing was changed"}},
		{name: "another deploy started a chain", now: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": engineOn("pi2", "pi2", "leader", "pi2", true, servers("pi2")...), "pi3": neverDeployed("pi3")},
			wantErr: []string{"another host holds a Raft configuration now", "would start a second chain", "nothing was changed on pi1"}},
		{name: "a host not reached", now: map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2")},
			wantErr: []string{"pi3 (not reached"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var failed []string
			cr := &clusterRun{name: "home", bootstrap: "pi1", rep: deploy.ReporterFunc(func(e deploy.Event) {
				if e.Status == deploy.EventFail {
					failed = append(failed, e.Target+" "+string(e.Step))
				}
			})}
			reads := 0
			cr.m = &membership{view: func(context.Context) *clusterView { reads++; return viewOf(three, tt.now) }}
			err := (&clusterTurn{cr: cr, name: "pi1", view: viewOf(three, fresh())}).stillStarts(context.Background())
			if reads != 1 {
				t.Errorf("the cluster was read %d times under the lock, want once", reads)
			}
			if len(tt.wantErr) == 0 {
				if err != nil || len(failed) > 0 {
					t.Fatalf("refused: %v (events %v)", err, failed)
				}
				return
			}
			if err == nil {
				t.Fatal("it would start a chain")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			if want := []string{"pi1 " + string(deploy.StepBootstrap)}; !slices.Equal(failed, want) {
				t.Errorf("failed events %v, want %v", failed, want)
			}
		})
	}
	cr := &clusterRun{name: "home", bootstrap: "pi1"}
	cr.m = &membership{view: func(context.Context) *clusterView {
		t.Error("a host that does not start the cluster read it again")
		return nil
	}}
	for _, turn := range []*clusterTurn{
		{cr: cr, name: "pi2", view: viewOf(three, fresh())},
		{cr: cr, name: "pi1", view: viewOf(three, fresh()), dry: true},
	} {
		if err := turn.stillStarts(context.Background()); err != nil {
			t.Errorf("%s: %v", turn.name, err)
		}
	}
}

// TestClusterOfReleasesBeforePerHostCredentials: hosts whose releases were
// rendered before per-host operator credentials refuse lucidctl's reads,
// and lucidctl does not fall back to the credentials they take. Those
// deployed as hosts of the cluster keep its chain: they are deployed in
// place, neither started anew nor joined, which binds their credentials.
// A single Pi's release of before cannot be told from a chain of its own:
// the cluster's deploy is refused, saying to deploy it alone first.
func TestClusterOfReleasesBeforePerHostCredentials(t *testing.T) {
	all := map[string]*deploy.HostStatus{"pi1": staleRelease("pi1", "pi1"), "pi2": staleRelease("pi2", "pi2"), "pi3": staleRelease("pi3", "pi3")}
	v := viewOf(three, all)
	if boot, err := decideBootstrap(v, "pi1"); boot || err != nil {
		t.Errorf("every host of before: bootstrap %v, %v; want none, and no refusal", boot, err)
	}
	for _, h := range three {
		if join, err := needsJoin(v, h); join || err != nil || !v.inPlace(h) {
			t.Errorf("%s: join %v, %v, in place %v; want it deployed in place", h, join, err, v.inPlace(h))
		}
	}
	// A dry run says so, not that they would join a cluster no host starts.
	var said []string
	cr := &clusterRun{name: "home", rep: deploy.ReporterFunc(func(e deploy.Event) { said = append(said, e.Target+": "+e.Message) })}
	for _, h := range three {
		cr.dryRunSays(v, h, false)
	}
	if len(said) != 3 || !strings.Contains(said[0], "pi1: would be deployed in place") {
		t.Errorf("a dry run of hosts of before says %q", said)
	}
	// Once pi1 is deployed it is read, and the others, voters of its
	// configuration, are not joined either.
	now := healthyThree()
	now["pi2"], now["pi3"] = all["pi2"], all["pi3"]
	v = viewOf(three, now)
	for _, h := range []string{"pi2", "pi3"} {
		if join, err := needsJoin(v, h); join || err != nil {
			t.Errorf("%s after pi1: join %v, %v", h, join, err)
		}
	}
	// A host never deployed beside them cannot start a chain.
	v = viewOf(three, map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": staleRelease("pi2", "pi2"), "pi3": staleRelease("pi3", "pi3")})
	if boot, err := decideBootstrap(v, "pi1"); boot || err != nil || v.inPlace("pi1") {
		t.Errorf("a new host beside hosts of before: bootstrap %v, %v", boot, err)
	}
	// A single Pi's release: its chain is its own, not the cluster's.
	single := viewOf(three, map[string]*deploy.HostStatus{"pi1": staleRelease("pi1", ""), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")})
	if single.inPlace("pi1") {
		t.Error("a single Pi's release of before is taken for a cluster host's")
	}
	_, err := decideBootstrap(single, "pi2")
	if !errors.Is(err, errCannotBootstrap) || !strings.Contains(err.Error(), "pi1 (engine /api/v1/consensus/status: 403") ||
		!strings.Contains(cli.Hint(err), "pi1 run a single Pi's release rendered before per-host operator credentials") || !strings.Contains(cli.Hint(err), "deploy each alone") {
		t.Errorf("a single Pi of before: %v, hint %q", err, cli.Hint(err))
	}
}

// TestNeedsJoin: a host joins when the cluster has a configuration that
// lacks it; a voter does not; a host whose engine holds another chain, or
// answers as another node, is refused before it changes.
func TestNeedsJoin(t *testing.T) {
	four := append(slices.Clone(three), "pi4")
	t.Run("voters and a new host", func(t *testing.T) {
		sts := healthyThree()
		v := viewOf(four, sts)
		for _, h := range three {
			if join, err := needsJoin(v, h); join || err != nil {
				t.Errorf("%s: join %v, %v", h, join, err)
			}
		}
		if join, err := needsJoin(v, "pi4"); !join || err != nil {
			t.Errorf("pi4 not reached: join %v, %v", join, err)
		}
		sts["pi4"] = neverDeployed("pi4")
		if join, err := needsJoin(viewOf(four, sts), "pi4"); !join || err != nil {
			t.Errorf("pi4 never deployed: join %v, %v", join, err)
		}
		sts["pi4"] = waitingToJoin("pi4")
		if join, err := needsJoin(viewOf(four, sts), "pi4"); !join || err != nil {
			t.Errorf("pi4 waiting: join %v, %v", join, err)
		}
		// A voter down is still a voter: it comes back by itself.
		sts["pi2"] = unreadEngine("pi2", "engine does not run")
		if join, err := needsJoin(viewOf(four, sts), "pi2"); join || err != nil {
			t.Errorf("pi2 down: join %v, %v", join, err)
		}
	})
	t.Run("a chain of its own", func(t *testing.T) {
		sts := healthyThree()
		sts["pi4"] = engineOn("pi4", "pi4", "leader", "pi4", true, servers("pi4")...)
		_, err := needsJoin(viewOf(four, sts), "pi4")
		if err == nil || !strings.Contains(err.Error(), "pi4's engine holds a chain of its own (Raft configuration: pi4 at 10.0.0.11:8094), not cluster home's: joining would throw it away") {
			t.Errorf("own chain: %v", err)
		}
	})
	t.Run("a renamed target", func(t *testing.T) {
		// lucid.yaml says pi-2 where it said pi2: its engine is still pi2.
		hosts := []string{"pi1", "pi-2", "pi3"}
		sts := healthyThree()
		sts["pi-2"] = sts["pi2"]
		sts["pi-2"].Target = "pi-2"
		delete(sts, "pi2")
		_, err := needsJoin(viewOf(hosts, sts), "pi-2")
		if err == nil || !strings.Contains(err.Error(), "pi-2's engine is node pi2 of cluster home, but lucid.yaml names the host pi-2") || !strings.Contains(cli.Hint(err), "name the target pi2 again") {
			t.Errorf("renamed: %v (hint %q)", err, cli.Hint(err))
		}
		// And pi2 is a voter no host is: it stays unless named.
		if s := viewOf(hosts, sts).strangers(); len(s) != 1 || s[0].ID != "pi2" {
			t.Errorf("strangers %+v", s)
		}
	})
	t.Run("a single Pi of before grows", func(t *testing.T) {
		// pi1 ran alone: its engine is still the single Pi's node.
		single := []engineapi.Server{{ID: "lucid-blockchain-engine", Address: "127.0.0.1:8094", Voter: true}}
		sts := map[string]*deploy.HostStatus{
			"pi1": engineOn("pi1", "lucid-blockchain-engine", "leader", "lucid-blockchain-engine", true, single...),
			"pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3"),
		}
		v := viewOf(three, sts)
		if v.grows != "pi1" || v.split != "" {
			t.Fatalf("grows %q, split %q", v.grows, v.split)
		}
		if join, err := needsJoin(v, "pi1"); join || err != nil {
			t.Errorf("pi1 starts the cluster keeping its chain: join %v, %v", join, err)
		}
		// pi2 cannot join an engine that still advertises its loopback.
		_, err := needsJoin(v, "pi2")
		if err == nil || !strings.Contains(err.Error(), "pi1's engine is still the single Pi's (node lucid-blockchain-engine at 127.0.0.1:8094)") || !strings.Contains(cli.Hint(err), "deploy pi1 first") {
			t.Errorf("pi2 before pi1: %v (hint %q)", err, cli.Hint(err))
		}
		// Once pi1 runs as the cluster's first node, pi2 joins it.
		sts["pi1"] = engineOn("pi1", "pi1", "leader", "pi1", true, servers("pi1")...)
		if v := viewOf(three, sts); v.grows != "" {
			t.Errorf("grows %q after pi1 took its name", v.grows)
		} else if join, err := needsJoin(v, "pi2"); !join || err != nil {
			t.Errorf("pi2 after pi1: join %v, %v", join, err)
		}
		// A one-voter chain under the target's own name is no single Pi
		// of before, and another host's chain of its own is still refused.
		sts["pi2"] = engineOn("pi2", "lucid-blockchain-engine", "leader", "lucid-blockchain-engine", true, single...)
		if v := viewOf(three, sts); v.split == "" {
			t.Error("two chains were not seen as a split")
		}
	})
	t.Run("a first deploy", func(t *testing.T) {
		v := viewOf(three, map[string]*deploy.HostStatus{"pi1": neverDeployed("pi1"), "pi2": neverDeployed("pi2"), "pi3": neverDeployed("pi3")})
		if join, err := needsJoin(v, "pi2"); join || err != nil {
			t.Errorf("join %v, %v: nothing to join yet", join, err)
		}
	})
}

// TestCheckRemoval: a voter leaves only while the voters left keep a
// healthy majority, and never the leader.
func TestCheckRemoval(t *testing.T) {
	hosts := []string{"pi1", "pi2"} // pi3 was taken out of lucid.yaml
	t.Run("a dead voter", func(t *testing.T) {
		sts := healthyThree()
		delete(sts, "pi3")
		if err := checkRemoval(viewOf(hosts, sts), "pi3"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the quorum", func(t *testing.T) {
		// Lost now: no change can be committed.
		sts := healthyThree()
		delete(sts, "pi3")
		down(sts["pi2"])
		err := checkRemoval(viewOf(hosts, sts), "pi3")
		if !errors.Is(err, errRemoval) || !strings.Contains(err.Error(), "cluster home has no quorum now (1 of 3 voters healthy, 2 needed)") {
			t.Errorf("lost now: %v", err)
		}
		// Kept now, lost without it: pi-3 (renamed from pi3) still answers
		// as voter pi3, while pi2 is down.
		sts = healthyThree()
		sts["pi-3"] = sts["pi3"]
		delete(sts, "pi3")
		down(sts["pi2"])
		err = checkRemoval(viewOf([]string{"pi1", "pi2", "pi-3"}, sts), "pi3")
		if !errors.Is(err, errRemoval) || !strings.Contains(err.Error(), "removing voter pi3 would leave 1 healthy of 2 voters, 2 needed") {
			t.Errorf("lost without it: %v", err)
		}
	})
	t.Run("the leader", func(t *testing.T) {
		cfg := servers("pi1", "pi2", "pi3")
		sts := map[string]*deploy.HostStatus{
			"pi1": engineOn("pi1", "pi1", "follower", "pi3", true, cfg...),
			"pi2": engineOn("pi2", "pi2", "follower", "pi3", true, cfg...),
		}
		// pi3 has left lucid.yaml's hosts: no one reads it, the others
		// name it as their leader.
		v := viewOf(hosts, sts)
		err := checkRemoval(v, "pi3")
		if !errors.Is(err, errRemoval) || !strings.Contains(err.Error(), "voter pi3 leads cluster home") || !strings.Contains(cli.Hint(err), "stop pi3's engine") {
			t.Errorf("leader not read: %v (hint %q)", err, cli.Hint(err))
		}
		v.leaderTarget = "pi3-host" // as if its host were read
		err = checkRemoval(v, "pi3")
		if !errors.Is(err, errRemoval) || !strings.Contains(err.Error(), "voter pi3 leads cluster home") || !strings.Contains(cli.Hint(err), "stop pi3's engine") {
			t.Errorf("leader: %v (hint %q)", err, cli.Hint(err))
		}
		// No leader known at all.
		v.leaderID, v.leaderTarget = "", ""
		err = checkRemoval(v, "pi2")
		if !errors.Is(err, errRemoval) || !strings.Contains(err.Error(), "no leader among the hosts read") {
			t.Errorf("no leader: %v", err)
		}
	})
}

// fakeVoters is the voter API of one host, recording what was asked.
type fakeVoters struct {
	host string
	log  *[]string
	// addErr answers the AddVoter calls in turn; probeErr ProbeRaft.
	addErr   []error
	probeErr error
	keys     []string
}

func (f *fakeVoters) AddVoter(_ context.Context, req engineapi.AddVoterRequest) error {
	*f.log = append(*f.log, fmt.Sprintf("%s: add %s at %s key %s", f.host, req.ID, req.Address, req.Key))
	if len(f.addErr) > 0 {
		err := f.addErr[0]
		f.addErr = f.addErr[1:]
		return err
	}
	return nil
}

func (f *fakeVoters) RemoveVoter(_ context.Context, id, key string) error {
	*f.log = append(*f.log, fmt.Sprintf("%s: remove %s key %s", f.host, id, key))
	return nil
}

func (f *fakeVoters) Validators(context.Context) ([]string, error) { return f.keys, nil }

func (f *fakeVoters) ProbeRaft(_ context.Context, addr string) error {
	*f.log = append(*f.log, f.host+": probe "+addr)
	return f.probeErr
}

func (f *fakeVoters) Close() {}

// fakeCluster is a membership over statuses the test changes, with the
// voter API of each host.
type fakeCluster struct {
	mu      sync.Mutex
	hosts   []string
	sts     map[string]*deploy.HostStatus
	engines map[string][]*engineapi.ConsensusStatus // answered in turn, the last again
	apis    map[string]*fakeVoters
	log     []string
	events  []deploy.Event
	audits  []string
}

func newFakeCluster(hosts []string, sts map[string]*deploy.HostStatus) *fakeCluster {
	return &fakeCluster{hosts: hosts, sts: sts, engines: map[string][]*engineapi.ConsensusStatus{}, apis: map[string]*fakeVoters{}}
}

func (f *fakeCluster) membership() *membership {
	return &membership{
		cluster: "home",
		view: func(context.Context) *clusterView {
			f.mu.Lock()
			defer f.mu.Unlock()
			return viewOf(f.hosts, f.sts)
		},
		engine: func(_ context.Context, target string) (*engineapi.ConsensusStatus, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			answers := f.engines[target]
			if len(answers) == 0 {
				return nil, fmt.Errorf("engine %w", deploy.ErrNotRunning)
			}
			cs := answers[0]
			if len(answers) > 1 {
				f.engines[target] = answers[1:]
			}
			if cs == nil {
				return nil, fmt.Errorf("engine %w", deploy.ErrNotRunning)
			}
			return cs, nil
		},
		voters: func(_ context.Context, target string) (voterAPI, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			a, ok := f.apis[target]
			if !ok {
				a = &fakeVoters{host: target}
				f.apis[target] = a
			}
			a.log = &f.log
			return a, nil
		},
		audit: func(_ context.Context, target string, args []string, err error) error {
			f.audits = append(f.audits, target+": "+strings.Join(args, " "))
			return nil
		},
		rep: deploy.ReporterFunc(func(e deploy.Event) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.events = append(f.events, e)
		}),
	}
}

func (f *fakeCluster) said(step deploy.Step, status deploy.EventStatus, words string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.events, func(e deploy.Event) bool {
		return e.Step == step && e.Status == status && strings.Contains(e.Message, words)
	})
}

// TestJoin: once the new engine answers without a configuration, its key
// and Raft address go to the leader's voter API (after the leader's host
// reaches it); leadership moving meanwhile is followed; a host whose
// engine holds another chain, or advertises loopback, is not added.
func TestJoin(t *testing.T) {
	four := append(slices.Clone(three), "pi4")
	newEngine := &engineapi.ConsensusStatus{NodeID: "pi4", State: "follower", RaftAddr: "10.0.0.14:8094", ValidatorKey: "pi4+0123abcd+KEY"}
	t.Run("a new card in a voter's place", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// pi2's card died; the new one holds no chain. It is still a
			// voter, so the leader reaches it at once, but its new key must
			// be sealed before it may ever lead.
			sts := healthyThree()
			sts["pi2"] = neverDeployed("pi2")
			if join, err := needsJoin(viewOf(three, sts), "pi2"); !join || err != nil {
				t.Fatalf("a new card in pi2's place: join %v, %v", join, err)
			}
			f := newFakeCluster(three, healthyThree())
			f.apis["pi1"] = &fakeVoters{host: "pi1", keys: []string{"pi1+key", "pi2+oldkey", "pi3+key"}}
			fresh := &engineapi.ConsensusStatus{NodeID: "pi2", State: "follower", RaftAddr: "10.0.0.12:8094", ValidatorKey: "pi2+newkey",
				Servers: servers("pi1", "pi2", "pi3")}
			f.engines["pi2"] = []*engineapi.ConsensusStatus{fresh}
			if err := f.membership().join(t.Context(), "pi2"); err != nil {
				t.Fatal(err)
			}
			if want := "pi1: add pi2 at 10.0.0.12:8094 key pi2+newkey"; !slices.Contains(f.log, want) {
				t.Errorf("calls %q, want %q", f.log, want)
			}
			// A voter whose key is sealed is left as it is.
			f = newFakeCluster(three, healthyThree())
			f.apis["pi1"] = &fakeVoters{host: "pi1", keys: []string{"pi1+key", "pi2+newkey", "pi3+key"}}
			f.engines["pi2"] = []*engineapi.ConsensusStatus{fresh}
			if err := f.membership().join(t.Context(), "pi2"); err != nil || len(f.log) != 0 {
				t.Errorf("a sealed voter: %v, calls %q", err, f.log)
			}
		})
	})
	t.Run("as soon as it answers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			// Not yet running, then the release before (another node id),
			// then the new engine.
			f.engines["pi4"] = []*engineapi.ConsensusStatus{nil, nil, {NodeID: "lucid-blockchain-engine", State: "leader"}, newEngine}
			start := time.Now()
			if err := f.membership().join(t.Context(), "pi4"); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start); waited != 3*joinPoll {
				t.Errorf("added after %s, want %s (three polls)", waited, 3*joinPoll)
			}
			want := []string{"pi1: probe 10.0.0.14:8094", "pi1: add pi4 at 10.0.0.14:8094 key pi4+0123abcd+KEY"}
			if !slices.Equal(f.log, want) {
				t.Errorf("calls %q, want %q", f.log, want)
			}
			if !f.said(deploy.StepJoin, deploy.EventStart, "sealing its validator key into the chain, then adding it as a voter at 10.0.0.14:8094, through the leader pi1") {
				t.Errorf("events %+v", f.events)
			}
			if len(f.audits) != 1 || f.audits[0] != "pi1: chain.voters.add pi4 --address 10.0.0.14:8094 --key pi4+0123abcd+KEY" {
				t.Errorf("audits %q", f.audits)
			}
		})
	})
	t.Run("the engine of a failed deploy of before", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// It answers as pi4, waiting to be added, at the address the
			// release before gave it: not added until this release's
			// engine answers.
			f := newFakeCluster(four, healthyThree())
			before := *newEngine
			before.RaftAddr = "10.0.0.99:8094"
			f.engines["pi4"] = []*engineapi.ConsensusStatus{&before, &before, newEngine}
			f.apis["pi1"] = &fakeVoters{host: "pi1"}
			m := f.membership()
			m.raftAddr = func(string) string { return "10.0.0.14:8094" }
			if err := m.join(t.Context(), "pi4"); err != nil {
				t.Fatal(err)
			}
			if want := []string{"pi1: probe 10.0.0.14:8094", "pi1: add pi4 at 10.0.0.14:8094 key pi4+0123abcd+KEY"}; !slices.Equal(f.log, want) {
				t.Errorf("calls %q, want %q", f.log, want)
			}
		})
	})
	t.Run("the leader moved", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{newEngine}
			f.apis["pi1"] = &fakeVoters{host: "pi1", addErr: []error{&api.Error{Status: 503, Code: engineapi.CodeNotLeader, Message: "this node is not the leader"}}}
			m := f.membership()
			view := m.view
			reads := 0
			m.view = func(ctx context.Context) *clusterView {
				reads++
				if reads == 2 { // pi2 took over
					cfg := servers("pi1", "pi2", "pi3")
					f.sts["pi1"] = engineOn("pi1", "pi1", "follower", "pi2", true, cfg...)
					f.sts["pi2"] = engineOn("pi2", "pi2", "leader", "pi2", true, cfg...)
					f.sts["pi3"] = engineOn("pi3", "pi3", "follower", "pi2", true, cfg...)
				}
				return view(ctx)
			}
			if err := m.join(t.Context(), "pi4"); err != nil {
				t.Fatal(err)
			}
			if n := len(f.log); n != 4 || f.log[3] != "pi2: add pi4 at 10.0.0.14:8094 key pi4+0123abcd+KEY" {
				t.Errorf("calls %q", f.log)
			}
		})
	})
	t.Run("the change did not finish", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// Raft could not take the change yet (another still
			// committing), then the key was not sealed in time: made
			// again, each time a poll later.
			f := newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{newEngine}
			f.apis["pi1"] = &fakeVoters{host: "pi1", addErr: []error{
				&api.Error{Status: 503, Code: engineapi.CodeConsensus, Message: "add voter: timed out enqueuing operation"},
				&api.Error{Status: 504, Code: engineapi.CodeConsensus, Message: "system transaction 0a1b not sealed in time"},
			}}
			start := time.Now()
			if err := f.membership().join(t.Context(), "pi4"); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start); waited != 2*joinPoll {
				t.Errorf("added after %s, want %s (two polls)", waited, 2*joinPoll)
			}
			if adds := slices.DeleteFunc(slices.Clone(f.log), func(s string) bool { return !strings.Contains(s, ": add ") }); len(adds) != 3 {
				t.Errorf("calls %q, want three adds", f.log)
			}
			// Every try failing: the last answer is said.
			f = newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{newEngine}
			busy := &api.Error{Status: 504, Code: engineapi.CodeConsensus, Message: "system transaction 0a1b not sealed in time"}
			f.apis["pi1"] = &fakeVoters{host: "pi1", addErr: slices.Repeat([]error{busy}, joinAttempts)}
			err := f.membership().join(t.Context(), "pi4")
			if err == nil || !strings.Contains(err.Error(), "pi4 cannot join cluster home: through the leader pi1: ") || !strings.Contains(err.Error(), "not sealed in time") {
				t.Errorf("every try unfinished: %v", err)
			}
			// A refusal is not made again.
			f = newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{newEngine}
			f.apis["pi1"] = &fakeVoters{host: "pi1", addErr: []error{&api.Error{Status: 409, Code: "LUCID_ERR_1009", Message: "validator key pi4+0123abcd+KEY was removed from the chain"}}}
			err = f.membership().join(t.Context(), "pi4")
			if err == nil || !strings.Contains(err.Error(), "was removed from the chain") || strings.Count(strings.Join(f.log, "\n"), ": add ") != 1 {
				t.Errorf("a refusal: %v, calls %q", err, f.log)
			}
		})
	})
	t.Run("refused", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			for name, tt := range map[string]struct {
				engine *engineapi.ConsensusStatus
				probe  error
				want   string
			}{
				"a chain of its own": {engine: &engineapi.ConsensusStatus{NodeID: "pi4", State: "leader", Servers: servers("pi4")}, want: "pi4's engine holds a Raft configuration of its own (pi4 at 10.0.0.11:8094), not cluster home's"},
				"loopback":           {engine: &engineapi.ConsensusStatus{NodeID: "pi4", State: "follower", RaftAddr: "127.0.0.1:8094"}, want: "its engine's Raft address 127.0.0.1:8094 is not one the other hosts can reach"},
				"not reached":        {engine: newEngine, probe: errors.New("pi1 cannot reach 10.0.0.14:8094: connect: no route to host"), want: "the leader's host cannot reach pi4's engine over Raft, so it is not added"},
			} {
				f := newFakeCluster(four, healthyThree())
				f.engines["pi4"] = []*engineapi.ConsensusStatus{tt.engine}
				f.apis["pi1"] = &fakeVoters{host: "pi1", probeErr: tt.probe}
				err := f.membership().join(t.Context(), "pi4")
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s: %v, want %q", name, err, tt.want)
				}
				if slices.ContainsFunc(f.log, func(s string) bool { return strings.Contains(s, ": add ") }) {
					t.Errorf("%s: added anyway: %q", name, f.log)
				}
			}
		})
	})
	t.Run("the deploy gives up first", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			err := f.membership().join(ctx, "pi4")
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pi4 did not join cluster home: its engine: engine does not run") {
				t.Errorf("%v", err)
			}
		})
	})
}

// pi4Added is f once the leader added pi4 to the three voters.
func pi4Added(f *fakeCluster) {
	cfg := servers("pi1", "pi2", "pi3", "pi4")
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range three {
		f.sts[h].Reports.RaftServers = cfg
	}
	f.sts["pi4"] = engineOn("pi4", "pi4", "follower", "pi1", true, cfg...)
}

// TestDeployJoining: the join runs beside the host's deploy, which passes
// its gate only once the engine was added; afterwards the leader's
// configuration must hold it. When the deploy fails, the join's failure
// (the reason its engine knew no leader) is said with it.
func TestDeployJoining(t *testing.T) {
	four := append(slices.Clone(three), "pi4")
	newEngine := &engineapi.ConsensusStatus{NodeID: "pi4", State: "follower", RaftAddr: "10.0.0.14:8094", ValidatorKey: "pi4+0123abcd+KEY"}
	t.Run("joined", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{nil, newEngine}
			added := make(chan struct{})
			f.apis["pi1"] = &fakeVoters{host: "pi1"}
			m := f.membership()
			voters := m.voters
			m.voters = func(ctx context.Context, target string) (voterAPI, error) {
				defer close(added)
				return voters(ctx, target)
			}
			deployHost := func(ctx context.Context) (*deploy.Result, error) {
				<-added // the engine's gate passes once it has a leader
				pi4Added(f)
				return &deploy.Result{Target: "pi4"}, nil
			}
			res, err := m.deployJoining(t.Context(), "pi4", time.Minute, nil, deployHost)
			if err != nil || res == nil {
				t.Fatalf("%v", err)
			}
			if !f.said(deploy.StepJoin, deploy.EventOK, "a voter of cluster home (4 voters, 4 healthy, leader pi1), caught up") {
				t.Errorf("events %+v", f.events)
			}
		})
	})
	t.Run("never added", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{{NodeID: "pi4", State: "follower", RaftAddr: "127.0.0.1:8094"}}
			deployHost := func(ctx context.Context) (*deploy.Result, error) {
				// The gate gives up on an engine that knows no leader.
				t := time.NewTimer(3 * time.Minute)
				defer t.Stop()
				<-t.C
				return nil, errors.New("pi4: engine: unhealthy")
			}
			_, err := f.membership().deployJoining(t.Context(), "pi4", time.Minute, nil, deployHost)
			if err == nil || !strings.Contains(err.Error(), "pi4: engine: unhealthy; and its engine was not added to the cluster, so it knew no leader: pi4 cannot join cluster home: its engine's Raft address 127.0.0.1:8094") {
				t.Errorf("%v", err)
			}
		})
	})
	t.Run("the deploy fails while the engine is being added", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			f.engines["pi4"] = []*engineapi.ConsensusStatus{newEngine}
			adding := make(chan struct{})
			m := f.membership()
			voters := m.voters
			m.voters = func(ctx context.Context, target string) (voterAPI, error) {
				a, err := voters(ctx, target)
				return &addHook{voterAPI: a, onAdd: func() {
					pi4Added(f) // by the leader, though the request is given up
					close(adding)
				}, hang: true}, err
			}
			deployHost := func(ctx context.Context) (*deploy.Result, error) {
				<-adding
				return nil, errors.New("pi4: health: gateway unhealthy")
			}
			_, err := m.deployJoining(t.Context(), "pi4", time.Minute, nil, deployHost)
			if err == nil || !strings.Contains(err.Error(), "pi4's engine was added to cluster home as a voter, and stays one") {
				t.Errorf("%v", err)
			}
		})
	})
	t.Run("the deploy fails before the engine answers", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFakeCluster(four, healthyThree())
			deployHost := func(ctx context.Context) (*deploy.Result, error) {
				return nil, errors.New("pi4: preflight: no docker compose")
			}
			_, err := f.membership().deployJoining(t.Context(), "pi4", time.Minute, nil, deployHost)
			if err == nil || err.Error() != "pi4: preflight: no docker compose" {
				t.Errorf("%v", err)
			}
		})
	})
}

// TestLeave: a voter that is no host of the cluster is reported and
// stays; named, it is removed with the validator key named after it,
// unless the quorum or an unknown key forbids it; a dry run removes
// nothing.
func TestLeave(t *testing.T) {
	_, pi3Key, err := chain.GenerateKey("pi3")
	if err != nil {
		t.Fatal(err)
	}
	_, pi1Key, _ := chain.GenerateKey("pi1")
	_, pi2Key, _ := chain.GenerateKey("pi2")
	keys := []string{pi1Key, pi2Key, pi3Key}
	// pi3Gone is the cluster after pi3 left Raft, its key still a
	// validator: a removal cut off between its two steps.
	pi3Gone := func() *fakeCluster {
		sts := healthyThree()
		delete(sts, "pi3")
		for _, h := range []string{"pi1", "pi2"} {
			sts[h].Reports.RaftServers = servers("pi1", "pi2")
		}
		f := newFakeCluster([]string{"pi1", "pi2"}, sts)
		f.apis["pi1"] = &fakeVoters{host: "pi1", keys: slices.Clone(keys)}
		return f
	}
	// removedPi3 checks that pi3's key, and pi3 if a voter, were removed
	// through pi1, recorded there, and said with ok.
	removedPi3 := func(t *testing.T, f *fakeCluster, ok string) {
		t.Helper()
		if want := []string{"pi1: remove pi3 key " + pi3Key}; !slices.Equal(f.log, want) {
			t.Errorf("calls %q, want %q", f.log, want)
		}
		if !f.said(deploy.StepLeave, deploy.EventOK, ok) || len(f.audits) != 1 || f.audits[0] != "pi1: chain.voters.remove pi3 --key "+pi3Key {
			t.Errorf("events %+v, audits %q", f.events, f.audits)
		}
	}
	hosts := []string{"pi1", "pi2"} // pi3 was taken out of lucid.yaml
	cluster := func() *fakeCluster {
		sts := healthyThree()
		delete(sts, "pi3")
		f := newFakeCluster(hosts, sts)
		f.apis["pi1"] = &fakeVoters{host: "pi1", keys: keys}
		return f
	}
	removed := func(f *fakeCluster) bool {
		return slices.ContainsFunc(f.log, func(s string) bool { return strings.Contains(s, "remove") })
	}

	// leaving is f's membership, whose reads after a removal see pi3 gone.
	leaving := func(f *fakeCluster) *membership {
		m := f.membership()
		view := m.view
		m.view = func(ctx context.Context) *clusterView {
			if removed(f) {
				for _, h := range hosts {
					f.sts[h].Reports.RaftServers = servers("pi1", "pi2")
				}
			}
			return view(ctx)
		}
		return m
	}

	t.Run("reported, not removed", func(t *testing.T) {
		f := cluster()
		if err := f.membership().leave(t.Context(), nil, false); err != nil {
			t.Fatal(err)
		}
		if removed(f) || !f.said(deploy.StepLeave, deploy.EventWarn, "voter pi3 (10.0.0.13:8094) is no host of cluster home in lucid.yaml; it stays a voter (--remove-voter pi3 removes it") {
			t.Errorf("calls %q, events %+v", f.log, f.events)
		}
	})
	t.Run("removed when named", func(t *testing.T) {
		f := cluster()
		m := leaving(f)
		if err := m.leave(t.Context(), []string{"pi3"}, false); err != nil {
			t.Fatal(err)
		}
		removedPi3(t, f, "voter pi3 and its validator key removed; 2 voters left")
	})
	t.Run("dry run", func(t *testing.T) {
		f := cluster()
		if err := f.membership().leave(t.Context(), []string{"pi3"}, true); err != nil {
			t.Fatal(err)
		}
		if removed(f) || !f.said(deploy.StepLeave, deploy.EventInfo, "would remove voter pi3 and its validator key, through the leader pi1") {
			t.Errorf("calls %q, events %+v", f.log, f.events)
		}
	})
	t.Run("not a voter", func(t *testing.T) {
		f := cluster()
		if err := f.membership().leave(t.Context(), []string{"pi9"}, false); err != nil || removed(f) {
			t.Fatalf("%v, calls %q", err, f.log)
		}
		if !f.said(deploy.StepLeave, deploy.EventInfo, "pi9 is no voter of cluster home, and no validator key is named after it: nothing to remove") {
			t.Errorf("events %+v", f.events)
		}
	})
	t.Run("the quorum", func(t *testing.T) {
		f := cluster()
		down(f.sts["pi2"])
		err := f.membership().leave(t.Context(), []string{"pi3"}, false)
		if !errors.Is(err, errRemoval) || removed(f) {
			t.Errorf("%v, calls %q", err, f.log)
		}
	})
	t.Run("its key gone already", func(t *testing.T) {
		// A removal of before that stopped once the key was sealed out:
		// the voter leaves Raft alone.
		f := cluster()
		f.apis["pi1"].keys = keys[:2]
		m := leaving(f)
		if err := m.leave(t.Context(), []string{"pi3"}, false); err != nil {
			t.Fatal(err)
		}
		if want := []string{"pi1: remove pi3 key "}; !slices.Equal(f.log, want) {
			t.Errorf("calls %q, want %q", f.log, want)
		}
		if !f.said(deploy.StepLeave, deploy.EventStart, "its validator key left the chain already") {
			t.Errorf("events %+v", f.events)
		}
	})
	t.Run("its voter gone, its key left", func(t *testing.T) {
		// The engine takes a voter out of Raft first and seals its key's
		// removal second: a removal cut off between the two left pi3's
		// key a validator. Run again, it removes the key.
		f := pi3Gone()
		if err := f.membership().leave(t.Context(), []string{"pi3"}, true); err != nil || len(f.log) != 0 ||
			!f.said(deploy.StepLeave, deploy.EventInfo, "pi3 is no voter of cluster home, but its validator key is: would remove the key, through the leader pi1") {
			t.Fatalf("dry run: %v, calls %q, events %+v", err, f.log, f.events)
		}
		if err := f.membership().leave(t.Context(), []string{"pi3"}, false); err != nil {
			t.Fatal(err)
		}
		removedPi3(t, f, "the validator key of pi3 removed")
	})
	t.Run("its key a running engine's", func(t *testing.T) {
		// pi2's engine was renamed from pi3 and kept its key: the key
		// named pi3 is a live voter's, and stays.
		f := pi3Gone()
		f.engines["pi2"] = []*engineapi.ConsensusStatus{{NodeID: "pi2", State: "follower", ValidatorKey: pi3Key}}
		err := f.membership().leave(t.Context(), []string{"pi3"}, false)
		if err == nil || !strings.Contains(err.Error(), "the validator key named pi3 is the key of pi2's engine (node pi2), which runs") || removed(f) {
			t.Errorf("%v, calls %q", err, f.log)
		}
	})
	t.Run("two keys named after it", func(t *testing.T) {
		f := cluster()
		_, other3, _ := chain.GenerateKey("pi3")
		f.apis["pi1"].keys = append(slices.Clone(keys), other3)
		err := f.membership().leave(t.Context(), []string{"pi3"}, false)
		if err == nil || !strings.Contains(err.Error(), "2 keys of the chain's validators are named pi3") || !strings.Contains(cli.Hint(err), "lucidctl maintenance voters remove pi3 --key KEY --target pi1") || removed(f) {
			t.Errorf("%v (hint %q), calls %q", err, cli.Hint(err), f.log)
		}
	})
}

// TestRemoveVoterFlag: --remove-voter names voters that are no host of
// the cluster, and needs a cluster.
func TestRemoveVoterFlag(t *testing.T) {
	ctx := context.Background()
	yml := "targets:\n  pi1: {host: 127.0.0.1, port: 1}\n  pi2: {host: 127.0.0.2, port: 1}\n  pi3: {host: 127.0.0.3, port: 1}\n  lab: {host: 127.0.0.1, port: 1}\nclusters:\n  home:\n    hosts: [pi1, pi2, pi3]\n" + imagesYAML
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"home", "--remove-voter", "pi2"}, "--remove-voter pi2: pi2 is a host of cluster home in lucid.yaml"},
		{[]string{"lab", "--remove-voter", "pi4"}, "--remove-voter: no target named is a host of a cluster of lucid.yaml"},
	} {
		err := execute(t, newDeployCmd, yml, tt.args...)
		if cli.ExitCode(ctx, err) != cli.ExitUsage || !strings.Contains(fmt.Sprint(err), tt.want) {
			t.Errorf("%q: %v (exit %d), want a usage error saying %q", tt.args, err, cli.ExitCode(ctx, err), tt.want)
		}
	}
}

// TestReadyToJoin: a join is refused before its host changes without the
// operator token (saying what to set), without a leader, or without a
// quorum to commit it.
func TestReadyToJoin(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte("local:\n  env_file: operator.env\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := cli.NewEnv(iostreams.System(), func(string) string { return "" })
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	cr := &clusterRun{env: env, name: "home", configs: map[string]deploy.Config{"pi1": {}}, why: map[string]string{}}
	four := append(slices.Clone(three), "pi4")
	err := cr.readyToJoin(viewOf(four, healthyThree()), "pi4")
	if err == nil || !strings.Contains(err.Error(), "pi4 must join cluster home as a voter, which takes the operator token: LUCID_OPERATOR_TOKEN is in neither the environment nor") ||
		!strings.Contains(cli.Hint(err), "set LUCID_OPERATOR_TOKEN in the environment") {
		t.Errorf("without the token: %v (hint %q)", err, cli.Hint(err))
	}

	env = cli.NewEnv(iostreams.System(), func(k string) string {
		if k == "LUCID_OPERATOR_TOKEN" {
			return "operator-token-of-the-test-0123456789abcdef"
		}
		return ""
	})
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	cr = &clusterRun{env: env, name: "home", configs: map[string]deploy.Config{"pi1": {}}, why: map[string]string{}}
	if err := cr.readyToJoin(viewOf(four, healthyThree()), "pi4"); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	sts := healthyThree()
	delete(sts, "pi1") // the leader's host is not reached
	if err := cr.readyToJoin(viewOf(four, sts), "pi4"); err == nil || !strings.Contains(err.Error(), "through its leader, but its leader pi1 is not among the hosts read") {
		t.Errorf("without a leader: %v", err)
	}
	sts = healthyThree()
	down(sts["pi2"])
	down(sts["pi3"])
	if err := cr.readyToJoin(viewOf(four, sts), "pi4"); err == nil || !strings.Contains(err.Error(), "has no quorum now (1 of 3 voters healthy, 2 needed)") {
		t.Errorf("without a quorum: %v", err)
	}
	sts = healthyThree()
	sts["pi3"].Reports.RaftRole = "leader" // two leaders in one term
	if err := cr.readyToJoin(viewOf(four, sts), "pi4"); err == nil || !strings.Contains(err.Error(), "cluster home is not sound: split") {
		t.Errorf("split: %v", err)
	}
}

// TestClusterDryRun drives `lucidctl deploy CLUSTER --dry-run --json`
// against real hosts (a throwaway sshd whose Docker is this machine's,
// each host a deploy dir and compose project of its own): every host of
// the cluster is read before the build, the first host deployed would
// start the cluster and the others join it; and a host of the cluster that
// cannot be reached refuses the bootstrap before anything is built.
func TestClusterDryRun(t *testing.T) {
	if err := exec.Command("docker", "version").Run(); err != nil {
		testenv.Missing(t, "a running Docker Engine")
	}
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	dir, _ := project(t, s)
	// The files of a cluster, which the deploy of one requires.
	f, err := deployfiles.Render(context.Background(), deployfiles.Options{ImageName: "lucid-clitest/{service}", ImageTag: "t", Cluster: &deployfiles.Cluster{Hosts: 3}})
	if err != nil {
		t.Fatal(err)
	}
	for _, rf := range f.All() {
		if err := envfile.WriteAtomic(filepath.Join(dir, rf.Path), rf.Content); err != nil {
			t.Fatal(err)
		}
	}
	dirs := map[string]string{}
	for _, h := range three {
		dirs[h] = filepath.Join(t.TempDir(), h)
	}
	writeYAML := func(pi3Off bool) {
		t.Helper()
		var yml strings.Builder
		yml.WriteString("targets:\n")
		for i, h := range three {
			port := s.Port
			if h == "pi3" && pi3Off {
				port = 1 // refuses at once: a host that is off
			}
			fmt.Fprintf(&yml, "  %s:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n    project: lucidclustertest%s\n    cluster_address: 10.0.0.%d\n",
				h, s.Host, port, s.User, dirs[h], strings.TrimPrefix(h, "pi"), 11+i)
		}
		yml.WriteString("clusters:\n  home:\n    hosts: [pi1, pi2, pi3]\nimages:\n  name: lucid-clitest/{service}\n  tag: t\nplatforms: [linux/amd64]\n")
		if err := os.WriteFile(filepath.Join(dir, "lucid.yaml"), []byte(yml.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeYAML(true)
	lucid := lucidAmd64(t)
	run := func(hosts ...string) ([]deploy.Event, error) {
		io, _, out, errOut := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.JSON, env.ConfigPath = true, filepath.Join(dir, "lucid.yaml")
		opts := &Options{Env: env, Names: []string{"home"}, Hosts: hosts, DryRun: true, MinFreeMiB: 16, Image: build.ImageFlags{Base: imagebuild.BaseScratch, Lucid: lucid}}
		opts.SSH = sshFlags{SSHFlags: cli.SSHFlags{Identities: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true}, dockerSocket: "/var/run/docker.sock"}
		err := runDeploy(context.Background(), opts)
		var events []deploy.Event
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			var e deploy.Event
			if json.Unmarshal(sc.Bytes(), &e) == nil && e.Step != resultStep {
				events = append(events, e)
			}
		}
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", out, errOut)
		}
		return events, err
	}
	has := func(events []deploy.Event, target string, step deploy.Step, status deploy.EventStatus, words string) bool {
		return slices.ContainsFunc(events, func(e deploy.Event) bool {
			return e.Target == target && e.Step == step && e.Status == status && strings.Contains(e.Message, words)
		})
	}

	// pi3 is off: whether it holds the chain is unknown, so nobody starts one.
	events, err := run("pi1", "pi2")
	if !errors.Is(err, errCannotBootstrap) || !strings.Contains(err.Error(), "pi3 (not reached: ") {
		t.Fatalf("with pi3 off: %v", err)
	}
	if !has(events, "pi3", deploy.StepConnect, deploy.EventWarn, "a host of cluster home, not deployed now, not reached to read it") ||
		!has(events, "pi1", deploy.StepBootstrap, deploy.EventFail, "pi1 would start a new chain") ||
		slices.ContainsFunc(events, func(e deploy.Event) bool { return e.Step == deploy.StepPlan }) {
		t.Errorf("with pi3 off: events %+v", events)
	}

	// pi3 answers: pi1 would start the cluster, pi2 and pi3 join it.
	writeYAML(false)
	events, err = run()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		target string
		step   deploy.Step
		words  string
	}{
		{"pi1", deploy.StepBootstrap, "no host of cluster home holds a Raft configuration: pi1's engine starts the cluster"},
		{"pi1", deploy.StepBootstrap, "would start cluster home"},
		{"pi2", deploy.StepJoin, "would join cluster home as a voter once its first host has started it"},
		{"pi3", deploy.StepJoin, "would join cluster home as a voter once its first host has started it"},
	} {
		if !has(events, want.target, want.step, deploy.EventInfo, want.words) {
			t.Errorf("no %s %s event saying %q: %+v", want.target, want.step, want.words, events)
		}
	}
	for _, h := range three {
		if !has(events, h, deploy.StepPlan, deploy.EventOK, "") {
			t.Errorf("no plan for %s: %+v", h, events)
		}
	}
}

// TestNewCardKeyMustBeSealed: a new card in pi2's place is a voter at once
// (the old configuration); when the join that seals its new key fails (the
// leader's host's connection drops), the deploy does not say pi2 joined,
// and the next deploy joins it again, since its chain lacks its key.
func TestNewCardKeyMustBeSealed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sts := healthyThree()
		unsealed := false
		sts["pi2"].Reports.ValidatorSealed = &unsealed
		f := newFakeCluster(three, sts)
		f.apis["pi1"] = &fakeVoters{host: "pi1", keys: []string{"pi1+key", "pi2+oldkey", "pi3+key"},
			addErr: []error{errors.New("ssh: connection to pi1 lost")}}
		f.engines["pi2"] = []*engineapi.ConsensusStatus{{NodeID: "pi2", State: "follower", RaftAddr: "10.0.0.12:8094", ValidatorKey: "pi2+newkey",
			Servers: servers("pi1", "pi2", "pi3")}}
		deployHost := func(context.Context) (*deploy.Result, error) { return &deploy.Result{Target: "pi2"}, nil }
		_, err := f.membership().deployJoining(t.Context(), "pi2", time.Minute, nil, deployHost)
		if err == nil || !strings.Contains(err.Error(), "validator key is not sealed") {
			t.Errorf("a voter whose key was never sealed: %v", err)
		}
		if join, err := needsJoin(viewOf(three, sts), "pi2"); !join || err != nil {
			t.Errorf("the next deploy joins pi2: %v, %v; want it to", join, err)
		}
		sealed := true
		sts["pi2"].Reports.ValidatorSealed = &sealed
		if join, err := needsJoin(viewOf(three, sts), "pi2"); join || err != nil {
			t.Errorf("a voter whose key is sealed joins again: %v, %v", join, err)
		}
	})
}

// TestSameRaftAddr: an engine's advertised address against its release's,
// compared as addresses; a release that names a host is not compared.
func TestSameRaftAddr(t *testing.T) {
	for _, tc := range []struct {
		got, want string
		same      bool
	}{
		{"10.0.0.14:8094", "10.0.0.14:8094", true},
		{"10.0.0.99:8094", "10.0.0.14:8094", false},
		{"10.0.0.14:9000", "10.0.0.14:8094", false},
		{"[::ffff:10.0.0.14]:8094", "10.0.0.14:8094", true},
		{"[fd00::14]:8094", "[fd00:0::14]:8094", true},
		{"192.168.1.14:8094", "pi4.local:8094", true},
		{"", "10.0.0.14:8094", false},
	} {
		if got := sameRaftAddr(tc.got, tc.want); got != tc.same {
			t.Errorf("sameRaftAddr(%q, %q) = %v", tc.got, tc.want, got)
		}
	}
}

// TestJoinWaitsOutAnElection: a join refused for the cluster's state of
// the moment (no quorum, no leader read) reads the cluster again a poll
// apart and goes on once it has both; refused so joinAttempts times in a
// row, or refused for what waiting does not change, it says why at once.
func TestJoinWaitsOutAnElection(t *testing.T) {
	env := cli.NewEnv(iostreams.System(), func(k string) string {
		if k == "LUCID_OPERATOR_TOKEN" {
			return "operator-token-of-the-test-0123456789abcdef"
		}
		return ""
	})
	env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
	four := append(slices.Clone(three), "pi4")
	electing := func() map[string]*deploy.HostStatus {
		sts := healthyThree()
		for _, h := range sts {
			h.Reports.RaftRole, h.Reports.RaftLeaderID = "candidate", ""
		}
		return sts
	}
	for _, tt := range []struct {
		name    string
		reads   []map[string]*deploy.HostStatus // what each read again gives
		want    string                          // words of the refusal; "" none
		readsTo int
	}{
		{name: "a leader after two reads", reads: []map[string]*deploy.HostStatus{electing(), healthyThree()}, readsTo: 2},
		{name: "no leader for good", reads: []map[string]*deploy.HostStatus{electing(), electing(), electing(), electing()}, want: "has no quorum now (0 of 3 voters healthy, 2 needed)", readsTo: joinAttempts - 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cr := &clusterRun{env: env, name: "home", configs: map[string]deploy.Config{"pi1": {}}, why: map[string]string{}}
			reads := 0
			cr.m = &membership{poll: time.Millisecond, view: func(context.Context) *clusterView {
				reads++
				return viewOf(four, tt.reads[min(reads, len(tt.reads))-1])
			}}
			v, err := cr.awaitJoinable(context.Background(), viewOf(four, electing()), "pi4")
			switch {
			case tt.want == "" && (err != nil || v.leaderTarget != "pi1"):
				t.Fatalf("refused: %v (leader %q)", err, v.leaderTarget)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n")):
				t.Fatalf("%q, want a refusal saying %q, on one line", err, tt.want)
			}
			if reads != tt.readsTo {
				t.Errorf("read the cluster again %d times, want %d", reads, tt.readsTo)
			}
		})
	}
	// Without the operator token, waiting changes nothing: no read again.
	bare := cli.NewEnv(iostreams.System(), func(string) string { return "" })
	bare.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
	if err := os.WriteFile(bare.ConfigPath, []byte("local:\n  env_file: operator.env\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cr := &clusterRun{env: bare, name: "home", configs: map[string]deploy.Config{"pi1": {}}, why: map[string]string{}}
	cr.m = &membership{poll: time.Millisecond, view: func(context.Context) *clusterView {
		t.Error("read again for a refusal that waiting does not change")
		return nil
	}}
	if _, err := cr.awaitJoinable(context.Background(), viewOf(four, electing()), "pi4"); err == nil || !strings.Contains(err.Error(), "takes the operator token") {
		t.Errorf("without the token: %v", err)
	}
}
