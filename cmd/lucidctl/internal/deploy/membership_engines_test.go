package deploy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/service/servicetest"
	"github.com/pickme/lucid/pkg/sshx"
)

// engineHost is a real `lucid engine` process standing for one Pi: its
// API on the loopback at the catalog's port plus offset, reached through
// a real sshd as a deploy reaches a host's services, and its Raft
// transport on an address of this machine that is not loopback, as
// another Pi would reach it.
type engineHost struct {
	name     string
	offset   int
	raftAddr string
	cmd      *exec.Cmd
	out      *testenv.SyncBuffer
}

// lanAddr is an IPv4 address of this machine other than loopback, which
// a cluster host's Raft address must be.
func lanAddr(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	testenv.Missing(t, "a network interface with an IPv4 address other than loopback")
	return ""
}

// freeOffset is a port offset at which the engine's port is free, and
// the mesh controller's too: a listener there that is no TLS server
// stands for a mesh that is off, which is what hostservices probes.
func freeOffset(t *testing.T) int {
	engine, _ := catalog.Lookup("engine")
	mesh, _ := catalog.Lookup(catalog.MeshService)
	for range 20 {
		offset := testenv.FreePort(t) - engine.Port
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(mesh.Port+offset)))
		if err != nil {
			continue
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return offset
	}
	t.Fatal("no free pair of engine and mesh ports")
	return 0
}

// startEngine runs host name's engine; bootstrap starts a cluster.
func startEngine(t *testing.T, bin, lan, name string, bootstrap bool) *engineHost {
	engine, _ := catalog.Lookup("engine")
	h := &engineHost{name: name, offset: freeOffset(t), raftAddr: net.JoinHostPort(lan, strconv.Itoa(testenv.FreePort(t))), out: &testenv.SyncBuffer{}}
	h.cmd = exec.Command(bin, "engine")
	h.cmd.Env = append(append(os.Environ(), servicetest.EnvFor("engine", name)...),
		"LUCID_ADDR=127.0.0.1:"+strconv.Itoa(engine.Port+h.offset), "LUCID_DATA_DIR="+filepath.Join(t.TempDir(), name),
		"LUCID_NODE_ID="+name, "LUCID_CHAIN_ID=lucid", "LUCID_RAFT_ADDR="+h.raftAddr, "LUCID_RAFT_ADVERTISE="+h.raftAddr,
		"LUCID_RAFT_BOOTSTRAP="+strconv.FormatBool(bootstrap), "LUCID_RAFT_FAST=true", "LUCID_BLOCK_INTERVAL=1s",
		"LUCID_MESH_URL=", "CONSUL_HOST=")
	h.cmd.Stdout, h.cmd.Stderr = h.out, h.out
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
		if t.Failed() {
			t.Logf("%s's engine:\n%s", name, h.out.String())
		}
	})
	return h
}

// TestJoinAndLeaveRealEngines proves the membership procedures against
// real engines through a real sshd: a deploy's join of two hosts to a
// cluster its first host started, through the leader's voter API
// (validator key sealed, then the voter added) beside each host's start,
// and the removal of a voter no host names any more, with its key. What
// Docker gives a deploy (each host's status, its published ports) is
// read here from the engines themselves.
func TestJoinAndLeaveRealEngines(t *testing.T) {
	sshd := testenv.StartSSHD(t, testenv.SSHDOptions{})
	lan := lanAddr(t)
	bin, err := testenv.BuildLucid(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	client, err := sshx.Dial(ctx, sshx.Target{Host: sshd.Host, Port: sshd.Port, User: sshd.User}, sshx.Options{KeyFiles: []string{sshd.ClientKey}, KnownHosts: sshd.KnownHosts, NoAgent: true, ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	creds := &hostservices.Credentials{Operator: servicetest.OperatorToken}
	session := func(h *engineHost) *hostservices.Session {
		return &hostservices.Session{Host: h.name, Dial: client.DialTCP, Offset: h.offset, Creds: creds, Say: func(string, ...any) {}}
	}

	// The hosts started so far: each host's deploy starts its engine
	// while the join beside it reads the hosts.
	var mu sync.Mutex
	hosts := map[string]*engineHost{"pi1": startEngine(t, bin, lan, "pi1", true)}
	host := func(name string) (*engineHost, bool) {
		mu.Lock()
		defer mu.Unlock()
		h, ok := hosts[name]
		return h, ok
	}
	order := []string{"pi1", "pi2", "pi3"}
	consensus := func(ctx context.Context, name string) (*engineapi.ConsensusStatus, error) {
		h, ok := host(name)
		if !ok {
			return nil, errors.New("never deployed")
		}
		s := session(h)
		defer s.Close()
		eng, err := s.Engine(ctx, 5*time.Second)
		if err != nil {
			return nil, err
		}
		return eng.Consensus(ctx)
	}
	var events []deploy.Event
	m := &membership{
		cluster: "home",
		engine:  consensus,
		view: func(ctx context.Context) *clusterView {
			statuses, errs := make([]*deploy.HostStatus, len(order)), make([]error, len(order))
			for i, name := range order {
				cs, err := consensus(ctx, name)
				if err != nil {
					errs[i] = err
					continue
				}
				statuses[i] = engineOn(name, cs.NodeID, cs.State, cs.LeaderID, cs.State == "leader" || cs.State == "follower", cs.Servers...)
			}
			return newClusterView("home", order, statuses, errs)
		},
		voters: func(ctx context.Context, target string) (voterAPI, error) {
			h, _ := host(target)
			return &sessionVoters{s: session(h)}, nil
		},
		audit: func(context.Context, string, []string, error) error { return nil },
		rep: deploy.ReporterFunc(func(e deploy.Event) {
			mu.Lock()
			defer mu.Unlock()
			events = append(events, e)
		}),
		poll: 200 * time.Millisecond,
	}
	testenv.Eventually(t, 30*time.Second, "pi1 leads the cluster it started", func() bool {
		cs, err := consensus(ctx, "pi1")
		return err == nil && cs.State == "leader" && len(cs.Servers) == 1
	})

	// Each host's "deploy" starts its engine and passes once the engine is
	// ready, which it is only with a leader: after the join added it.
	for _, name := range []string{"pi2", "pi3"} {
		deployHost := func(ctx context.Context) (*deploy.Result, error) {
			h := startEngine(t, bin, lan, name, false)
			mu.Lock()
			hosts[name] = h
			mu.Unlock()
			engine, _ := catalog.Lookup("engine")
			ready := func() bool {
				resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(engine.Port+h.offset) + "/ready")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			}
			if !testenv.PollUntil(time.Minute, ready) {
				return nil, errors.New(name + ": engine not ready")
			}
			return &deploy.Result{Target: name}, nil
		}
		if _, err := m.deployJoining(ctx, name, time.Minute, nil, deployHost); err != nil {
			t.Fatalf("%s: %v\nevents: %+v", name, err, events)
		}
	}
	v := m.view(ctx)
	if len(v.voters) != 3 || v.leaderTarget != "pi1" {
		t.Fatalf("after the joins: voters %+v, leader %q", v.voters, v.leaderTarget)
	}
	for _, x := range v.voters {
		if !x.Healthy || x.Address != hosts[x.ID].raftAddr {
			t.Errorf("voter %+v, want healthy at %s", x, hosts[x.ID].raftAddr)
		}
	}
	api := &sessionVoters{s: session(hosts["pi1"])}
	defer api.Close()
	keys, err := api.Validators(ctx)
	if err != nil || len(keys) != 3 {
		t.Fatalf("validators %q, %v: want each host's key sealed", keys, err)
	}

	// pi3 is taken out of lucid.yaml's cluster: it stays until named, then
	// leaves with its key.
	order = []string{"pi1", "pi2"}
	if err := m.leave(ctx, nil, false); err != nil {
		t.Fatal(err)
	}
	if v := m.view(ctx); len(v.voters) != 3 {
		t.Fatalf("a voter left unasked: %+v", v.voters)
	}
	if err := m.leave(ctx, []string{"pi3"}, false); err != nil {
		t.Fatalf("%v\nevents: %+v", err, events)
	}
	if v := m.view(ctx); len(v.voters) != 2 || v.voter("pi3") != nil {
		t.Fatalf("after the removal: %+v", v.voters)
	}
	keys, err = api.Validators(ctx)
	if err != nil || len(keys) != 2 || slices.ContainsFunc(keys, func(k string) bool {
		vr, err := chain.ParseVerifier(k)
		return err != nil || vr.Name() == "pi3"
	}) {
		t.Fatalf("validators after the removal %q, %v", keys, err)
	}
}
