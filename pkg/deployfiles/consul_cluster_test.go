package deployfiles

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
)

// consulNode is a consul agent run by TestConsulCluster.
type consulNode struct {
	name, addr string
	http       string // host:port
	serf       int
	out        testenv.SyncBuffer
}

// startConsulNode runs consul with cfg, which ForHost made, adjusted only
// where this test must differ from a Pi: every agent on this machine's
// loopback, on free ports, its data in a temporary directory, and the
// peers to join with their ports.
func startConsulNode(t *testing.T, bin, name, addr string, cfg map[string]any, join []string) *consulNode {
	t.Helper()
	free := func() int { return testenv.FreePort(t) }
	n := &consulNode{name: name, addr: addr, serf: free()}
	httpPort := free()
	n.http = fmt.Sprintf("%s:%d", addr, httpPort)
	cfg["bind_addr"], cfg["client_addr"] = addr, addr
	cfg["data_dir"] = t.TempDir()
	cfg["ports"] = map[string]any{"http": httpPort, "server": free(), "serf_lan": n.serf, "serf_wan": free(), "dns": -1, "grpc": -1}
	delete(cfg, "retry_join")
	if len(join) > 0 {
		cfg["retry_join"] = join
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "local.json") // the extension names the format
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "agent", "-config-file="+path)
	cmd.Stdout, cmd.Stderr = &n.out, &n.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("consul %s:\n%s", name, n.out.String())
		}
	})
	testenv.Eventually(t, 20*time.Second, name+"'s HTTP API answers", func() bool {
		_, _, err := n.call(http.MethodGet, "/v1/status/leader", "") // any answer
		return err == nil
	})
	return n
}

// call makes a request to the agent's HTTP API, with token if not "".
func (n *consulNode) call(method, path, token string) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://"+n.http+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// get is a GET that must answer 200.
func (n *consulNode) get(path, token string) ([]byte, error) {
	code, body, err := n.call(http.MethodGet, path, token)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %s", path, code, strings.TrimSpace(string(body)))
	}
	return body, err
}

// startConsulServers runs three Consul servers from ForHost's
// configuration for hosts on 127.0.0.1-3, one after the other, each
// joining those before it; with bootstrap the first is the host that
// bootstraps the cluster. It waits for one leader and three voters.
func startConsulServers(t *testing.T, bin string, f *Files, bootstrap bool) []*consulNode {
	t.Helper()
	addrs := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	var nodes []*consulNode
	for i, addr := range addrs {
		peers := slices.Delete(slices.Clone(addrs), i, i+1)
		files, err := ForHost(f.ServiceEnvs, HostRole{Name: fmt.Sprintf("pi%d", i+1), Address: addr, Peers: peers, Bootstrap: bootstrap && i == 0})
		if err != nil {
			t.Fatal(err)
		}
		cfg := consulConfigOf(t, files)
		if rj, _ := json.Marshal(cfg["retry_join"]); string(rj) != mustJSON(t, peers) {
			t.Fatalf("retry_join %s, want the peers %v", rj, peers)
		}
		var join []string // the peers started so far, with their ports
		for _, n := range nodes {
			join = append(join, fmt.Sprintf("%s:%d", n.addr, n.serf))
		}
		nodes = append(nodes, startConsulNode(t, bin, fmt.Sprintf("pi%d", i+1), addr, cfg, join))
	}
	start := time.Now()
	var leader string
	// Servers that join a cluster become voters once autopilot finds them
	// stable (10 s, checked every 10 s); a cluster bootstrapped by all
	// three has three voters at once.
	testenv.Eventually(t, 45*time.Second, "one leader and three voters", func() bool {
		leaders := map[string]bool{}
		for _, n := range nodes {
			b, err := n.get("/v1/status/leader", "")
			if err != nil {
				return false
			}
			leader = string(b)
			leaders[leader] = true
		}
		if len(leaders) != 1 || leader == `""` {
			return false
		}
		b, err := nodes[0].get("/v1/operator/raft/configuration", placeholderUUID())
		if err != nil {
			return false
		}
		var rc struct {
			Servers []struct {
				Node  string
				Voter bool
			}
		}
		if json.Unmarshal(b, &rc) != nil || len(rc.Servers) != 3 {
			return false
		}
		for _, s := range rc.Servers {
			if !s.Voter {
				return false
			}
		}
		return true
	})
	t.Logf("three voters, leader %s, %s after the third server started", leader, time.Since(start).Round(time.Millisecond))
	return nodes
}

// TestConsulCluster runs three real Consul servers from ForHost's
// configuration and checks that they elect one leader and become three
// voters, both as on the first deploy of a cluster (the first host
// bootstraps, the others join it) and when no host bootstraps (each
// expects all three: servers without state, such as after all lost
// theirs); that gossip is encrypted with the rendered key (an agent
// without it cannot join, one with it can); and that the ACLs are on
// (anonymous requests see nothing and write nothing).
func TestConsulCluster(t *testing.T) {
	bin := testenv.Tool(t, "consul", "LUCID_CONSUL_BIN")
	f := renderCluster(t, 3, Options{})
	token := placeholderUUID()
	t.Run("all-expect-three", func(t *testing.T) { startConsulServers(t, bin, f, false) })
	nodes := startConsulServers(t, bin, f, true)

	// Every server gossips with the rendered key, and only with it.
	b, err := nodes[1].get("/v1/operator/keyring", token)
	if err != nil {
		t.Fatal(err)
	}
	var rings []struct {
		Keys     map[string]int
		NumNodes int
	}
	if err := json.Unmarshal(b, &rings); err != nil || len(rings) == 0 {
		t.Fatalf("keyring: %s %v", b, err)
	}
	for _, r := range rings {
		if len(r.Keys) != 1 || r.Keys[placeholderGossipKey()] != r.NumNodes {
			t.Errorf("keyring %+v: want the rendered key alone, on every node", r)
		}
	}

	// The ACLs are on: anonymous sees no node and writes nothing; the
	// management token sees the three servers.
	if b, err := nodes[2].get("/v1/catalog/nodes", ""); err != nil || strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("anonymous catalog read: %s %v, want nothing", b, err)
	}
	if code, _, err := nodes[2].call(http.MethodPut, "/v1/kv/lucid-probe", ""); err != nil || code != http.StatusForbidden {
		t.Errorf("anonymous KV write: %d %v, want 403", code, err)
	}
	var catalog []struct{ Node string }
	if b, err := nodes[2].get("/v1/catalog/nodes", token); err != nil || json.Unmarshal(b, &catalog) != nil || len(catalog) != 3 {
		t.Errorf("catalog read with the management token: %s %v", b, err)
	}

	// An agent without the gossip key cannot join; one with it can.
	members := func() []string {
		var ms []struct{ Name string }
		b, err := nodes[0].get("/v1/agent/members", token)
		if err != nil || json.Unmarshal(b, &ms) != nil {
			t.Fatalf("members: %s %v", b, err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.Name)
		}
		slices.Sort(out)
		return out
	}
	seed := fmt.Sprintf("%s:%d", nodes[0].addr, nodes[0].serf)
	agent := func(name, addr, key string) *consulNode {
		cfg := map[string]any{"node_name": name}
		if key != "" {
			cfg["encrypt"] = key
		}
		return startConsulNode(t, bin, name, addr, cfg, nil)
	}
	intruder := agent("intruder", "127.0.0.4", "")
	if code, body, err := intruder.call(http.MethodPut, "/v1/agent/join/"+seed, ""); err != nil || code == http.StatusOK {
		t.Errorf("an agent without the gossip key joined: %d %s %v", code, body, err)
	}
	if got := members(); !slices.Equal(got, []string{"pi1", "pi2", "pi3"}) {
		t.Errorf("members after the intruder tried: %v", got)
	}
	guest := agent("guest", "127.0.0.5", placeholderGossipKey())
	if code, body, err := guest.call(http.MethodPut, "/v1/agent/join/"+seed, ""); err != nil || code != http.StatusOK {
		t.Fatalf("an agent with the key: %d %s %v", code, body, err)
	}
	testenv.Eventually(t, 10*time.Second, "an agent with the key joins", func() bool {
		return slices.Equal(members(), []string{"guest", "pi1", "pi2", "pi3"})
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
