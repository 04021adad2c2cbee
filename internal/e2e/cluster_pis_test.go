package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/internal/testenv/pis"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// piCluster is a cluster of Pis deployed by lucidctl, and what a test
// needs to drive it: the project, its secrets, a user for the gateways.
type piCluster struct {
	pis     []*pis.Pi
	p       *stackProject
	ssh     []string
	secrets map[string]string
	// subject is the user the anchors are sent as, token its JWT.
	subject, token string
}

// piClient keeps connections to the gateways open under load.
var piClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// gateway is the Pi's gateway, on its address.
func gatewayOf(pi *pis.Pi) string { return "http://" + pi.Addr + ":8080" }

// deployCluster starts three Pis with Consul loaded, writes a lucid.yaml
// with a cluster of the three, renders it and deploys the cluster once.
// It returns the deploy's --json events.
func deployCluster(t *testing.T) (*piCluster, string) {
	t.Helper()
	ctx := context.Background()
	began := time.Now()
	three := pis.Start(t, 3)
	t.Logf("3 Pis up in %s", time.Since(began).Round(time.Millisecond))
	consul := pis.ConsulImage(t)
	var wg sync.WaitGroup
	errs := make([]error, len(three))
	for i, pi := range three {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = pi.LoadImage(ctx, consul) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	c := &piCluster{pis: three, p: &stackProject{dir: t.TempDir(), env: append(os.Environ(), "NO_COLOR=1")}}
	var y strings.Builder
	fmt.Fprintf(&y, "platforms: [linux/%s]\nimages:\n  name: lucid-e2e/lucid-{service}\n  tag: e2e\ntargets:\n", runtime.GOARCH)
	var names []string
	for _, pi := range three {
		fmt.Fprintf(&y, "  %s:\n    host: %s\n    port: %d\n    user: %s\n    dir: /srv/lucid\n    cluster_address: %s\n", pi.Name, pi.Addr, pi.SSHPort, pi.User, pi.Addr)
		names = append(names, pi.Name)
	}
	fmt.Fprintf(&y, "clusters:\n  home:\n    hosts: [%s]\n", strings.Join(names, ", "))
	if err := os.WriteFile(filepath.Join(c.p.dir, "lucid.yaml"), []byte(y.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	caCerts := filepath.Join(c.p.dir, "ca.pem")
	if err := os.WriteFile(caCerts, []byte("e2e bundle\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Every Pi of a set has the same client key and known_hosts.
	c.ssh = []string{"-i", three[0].ClientKey, "--known-hosts", three[0].KnownHosts, "--no-agent"}
	c.run(t, "render")
	secrets, err := envfile.Read(filepath.Join(c.p.dir, projectconfig.DefaultEnvFile))
	if err != nil {
		t.Fatal(err)
	}
	c.secrets = secrets
	if secrets["LUCID_OPERATOR_TOKEN"] == "" || secrets["JWT_SECRET_KEY"] == "" {
		t.Fatalf("the rendered env file lacks LUCID_OPERATOR_TOKEN or JWT_SECRET_KEY")
	}
	c.p.env = append(c.p.env, "LUCID_OPERATOR_TOKEN="+secrets["LUCID_OPERATOR_TOKEN"])

	began = time.Now()
	args := append([]string{"deploy", "home", "--json", "--lucid", lucidBin, "--base", "scratch", "--ca-certs", caCerts, "--min-free", "16"}, c.ssh...)
	out, errOut, code := c.p.lucidctl(t, args...)
	if code != 0 {
		t.Fatal(failedRun(args, code, out, errOut))
	}
	t.Logf("cluster deployed (3 hosts, one after another) in %s", time.Since(began).Round(time.Millisecond))
	for _, pi := range three {
		t.Logf("%s steps: %s", pi.Name, stepTimes(eventsOf(out, pi.Name)))
	}
	for _, line := range strings.Split(eventsOf(out, three[1].Name), "\n") {
		if strings.Contains(line, `"join"`) || strings.Contains(line, `"caught-up"`) {
			t.Logf("%s", line)
		}
	}

	c.subject = "cluster-e2e@example.org"
	c.token, _, err = auth.Mint([]byte(secrets["JWT_SECRET_KEY"]), auth.MintOptions{Subject: c.subject, Tier: auth.TierEnterprise, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return c, out
}

func (c *piCluster) run(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.p.lucidctl(t, args...)
	if code != 0 {
		t.Fatal(failedRun(args, code, out, errOut))
	}
	return out
}

// eventsOf are the --json events of one target.
func eventsOf(events, target string) string {
	var keep []string
	for _, line := range strings.Split(events, "\n") {
		var e struct{ Target string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Target == target {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

// hasEvent reports whether the events hold one of target's with the step
// and status.
func hasEvent(events, target, step, status string) bool {
	for _, line := range strings.Split(events, "\n") {
		var e struct{ Target, Step, Status string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Target == target && e.Step == step && e.Status == status {
			return true
		}
	}
	return false
}

// clusterStatus is what the test reads of `lucidctl status --json`.
type clusterStatus struct {
	Hosts []struct {
		Target     string
		Healthy    bool
		DeployLock *struct{ User, Host string } `json:"deploy_lock"`
	}
	Cluster *struct {
		Voters []struct {
			ID, Target, State string
			Healthy           bool
		}
		HealthyVoters int `json:"healthy_voters"`
		Quorum        bool
		Leader        *struct{ ID, Target string }
		Errors        []string
		Healthy       bool
	}
	Healthy bool
}

func (c *piCluster) status(t *testing.T) (clusterStatus, string, int) {
	t.Helper()
	out, errOut, code := c.p.lucidctl(t, append([]string{"status", "--target", "home", "--json"}, c.ssh...)...)
	var st clusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, out + errOut, code
	}
	return st, out + errOut, code
}

// do sends a request to a gateway as the test's user.
func (c *piCluster) do(ctx context.Context, method, url string, body []byte) (int, []byte, error) {
	return doAs(ctx, c.token, method, url, body)
}

// doAs sends a request to a gateway with a user's token.
func doAs(ctx context.Context, token, method, url string, body []byte) (int, []byte, error) {
	code, raw, _, err := request(ctx, token, method, url, body)
	return code, raw, err
}

// request is doAs with the response's header.
func request(ctx context.Context, token, method, url string, body []byte) (int, []byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := piClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, resp.Header, err
}

// anchorBody is anchor i of a run, owned by the test's user.
func (c *piCluster) anchorBody(run string, i int) []byte { return anchorOf(c.subject, run, i) }

// anchorOf is anchor i of a run, owned by subject.
func anchorOf(subject, run string, i int) []byte {
	a := *chaintest.Anchor(i).Anchor
	a.Owner = subject
	a.SessionID = fmt.Sprintf("%s-0000-4000-8000-%012d", run, i)
	b, _ := json.Marshal(a)
	return b
}

// block is a node's block at a height, read through its Pi's gateway from
// its engine.
func (c *piCluster) block(ctx context.Context, pi *pis.Pi, height uint64) (*chain.Block, error) {
	code, raw, err := c.do(ctx, http.MethodGet, fmt.Sprintf("%s/blockchain/api/v1/blocks/%d", gatewayOf(pi), height), nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("%s: block %d: %d %s", pi.Name, height, code, raw)
	}
	var b chain.Block
	return &b, json.Unmarshal(raw, &b)
}

// chainInfo is a node's chain, read through its Pi's gateway.
func (c *piCluster) chainInfo(ctx context.Context, pi *pis.Pi) (struct {
	Height     uint64
	Validators []string
	NodeID     string `json:"node_id"`
	Leader     bool
}, error) {
	var info struct {
		Height     uint64
		Validators []string
		NodeID     string `json:"node_id"`
		Leader     bool
	}
	code, raw, err := c.do(ctx, http.MethodGet, gatewayOf(pi)+"/blockchain/api/v1/chain", nil)
	if err != nil {
		return info, err
	}
	if code != http.StatusOK {
		return info, fmt.Errorf("%s: chain: %d %s", pi.Name, code, raw)
	}
	err = json.Unmarshal(raw, &info)
	return info, err
}

// chainReader reads the nodes' chains, each block and validator set once.
type chainReader struct {
	c          *piCluster
	mu         sync.Mutex
	validators map[string]note.Verifiers
	blocks     map[string]*chain.Block // by Pi and height
}

func newChainReader(c *piCluster) *chainReader {
	return &chainReader{c: c, validators: map[string]note.Verifiers{}, blocks: map[string]*chain.Block{}}
}

func (r *chainReader) verifiers(ctx context.Context, pi *pis.Pi) (note.Verifiers, error) {
	r.mu.Lock()
	vs, ok := r.validators[pi.Name]
	r.mu.Unlock()
	if ok {
		return vs, nil
	}
	info, err := r.c.chainInfo(ctx, pi)
	if err != nil {
		return nil, err
	}
	if vs, err = chain.Verifiers(info.Validators); err != nil {
		return nil, fmt.Errorf("%s: validators: %w", pi.Name, err)
	}
	r.mu.Lock()
	r.validators[pi.Name] = vs
	r.mu.Unlock()
	return vs, nil
}

func (r *chainReader) block(ctx context.Context, pi *pis.Pi, height uint64) (*chain.Block, error) {
	key := fmt.Sprintf("%s/%d", pi.Name, height)
	r.mu.Lock()
	b, ok := r.blocks[key]
	r.mu.Unlock()
	if ok {
		return b, nil
	}
	b, err := r.c.block(ctx, pi, height)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.blocks[key] = b
	r.mu.Unlock()
	return b, nil
}

// verify verifies a receipt against every node's chain: its checkpoint
// signed by the node's validators, and the node's block at its height the
// one the receipt names. It returns the receipt's header.
func (r *chainReader) verify(ctx context.Context, receipt string) (*chain.Header, error) {
	var h *chain.Header
	for _, pi := range r.c.pis {
		vs, err := r.verifiers(ctx, pi)
		if err != nil {
			return nil, err
		}
		v, err := chain.VerifyReceipt([]byte(receipt), vs, "")
		if err != nil {
			return nil, fmt.Errorf("%s: receipt: %w", pi.Name, err)
		}
		// A follower applies a committed block a moment after the leader.
		b, err := r.block(ctx, pi, v.Header.Height)
		if err != nil {
			testenv.PollUntil(30*time.Second, func() bool { b, err = r.block(ctx, pi, v.Header.Height); return err == nil })
		}
		if err != nil {
			return nil, err
		}
		if b.Hash != v.Header.Hash() {
			return nil, fmt.Errorf("%s: block %d is %s, the receipt's %s", pi.Name, v.Header.Height, b.Hash, v.Header.Hash())
		}
		h = v.Header
	}
	return h, nil
}

// submission is one anchor sent under load, and what became of it.
type submission struct {
	session string
	token   string
	gateway *pis.Pi
	code    int
	err     error
	sent    time.Time
	// sealedAt is the time of the block that sealed it (0 if not sealed).
	sealedAt time.Time
	height   uint64
}

// load sends anchors through the gateways in a closed loop, workers
// goroutines a gateway, each its own user (the gateways' rate budgets are
// per user), until ctx ends, and returns every submission.
func (c *piCluster) load(ctx context.Context, t *testing.T, run string, gateways []*pis.Pi, workers int) []*submission {
	var mu sync.Mutex
	var subs []*submission
	var wg sync.WaitGroup
	for g, gw := range gateways {
		for w := range workers {
			subject := fmt.Sprintf("load-%s-%d-%d@example.org", run, g, w)
			token, _, err := auth.Mint([]byte(c.secrets["JWT_SECRET_KEY"]), auth.MintOptions{Subject: subject, Tier: auth.TierEnterprise, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ctx.Err() == nil; n++ {
					i := (g*workers+w)*1_000_000 + n
					body := anchorOf(subject, run, i)
					var a struct {
						SessionID string `json:"session_id"`
					}
					_ = json.Unmarshal(body, &a)
					s := &submission{session: a.SessionID, token: token, gateway: gw, sent: time.Now()}
					s.code, _, s.err = doAs(ctx, token, http.MethodPost, gatewayOf(gw)+"/api/v1/anchors", body)
					if s.err != nil && ctx.Err() != nil {
						return // cut short by the load's end: not an answer
					}
					mu.Lock()
					subs = append(subs, s)
					mu.Unlock()
					if s.err != nil || s.code >= 500 {
						// A Pi that is down answers at once: a client
						// waits a moment before it tries again, rather
						// than spin on the cores the Pis share.
						select {
						case <-ctx.Done():
						case <-time.After(50 * time.Millisecond):
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	return subs
}

// measure runs a closed-loop load of clients spread over the gateways for
// 10 s, waits until every accepted anchor is sealed and its receipt
// verified, and says what the load did.
func (c *piCluster) measure(t *testing.T, r *chainReader, gateways []*pis.Pi, clients int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	subs := c.load(ctx, t, fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff), gateways, clients/len(gateways))
	took := time.Since(began)
	c.awaitSealed(t, r, subs, 90*time.Second)
	return loadFigures(subs, took)
}

// awaitSealed waits until every accepted submission is sealed, reading
// its status through its own gateway as its owner, verifies its receipt
// against every node's chain, and records its block's time and height.
// The reads are the owners' requests like any other, under their tier's
// rate limit: a 429 is waited out as its Retry-After says. It gives up
// once no receipt has been verified for stall (a loaded machine reads
// slowly, but it reads).
func (c *piCluster) awaitSealed(t *testing.T, r *chainReader, subs []*submission, stall time.Duration) {
	t.Helper()
	var accepted []*submission
	for _, s := range subs {
		if s.code == http.StatusAccepted {
			accepted = append(accepted, s)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stalled := time.AfterFunc(stall, cancel) // put off by each verified receipt
	defer stalled.Stop()
	work := make(chan *submission)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	var limited atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				st, err := c.sealedStatus(ctx, s, &limited)
				var why string
				if err != nil {
					why = fmt.Sprintf("%s through %s: not sealed, and no receipt verified for %s: %v", s.session, s.gateway.Name, stall, err)
				} else if h, err := r.verify(ctx, st.Receipt); err != nil {
					why = fmt.Sprintf("%s through %s: %v", s.session, s.gateway.Name, err)
				} else {
					s.sealedAt, s.height = h.Time, h.Height
					stalled.Reset(stall)
				}
				if why != "" {
					mu.Lock()
					failures = append(failures, why)
					mu.Unlock()
				}
			}
		}()
	}
	began := time.Now()
	for _, s := range accepted {
		work <- s
	}
	close(work)
	wg.Wait()
	t.Logf("%d receipts read and verified on every node in %s (%d reads answered 429 and retried)", len(accepted)-len(failures), time.Since(began).Round(time.Second), limited.Load())
	for i, f := range failures {
		if i == 10 {
			t.Errorf("... and %d more", len(failures)-10)
			break
		}
		t.Error(f)
	}
}

// sealedStatus reads s's status until it is sealed with a receipt,
// waiting out each 429 for its Retry-After, until ctx ends.
func (c *piCluster) sealedStatus(ctx context.Context, s *submission, limited *atomic.Int64) (anchorStatus, error) {
	var st anchorStatus
	var last string
	for {
		wait := 500 * time.Millisecond // a block is sealed every few seconds
		code, raw, hdr, err := request(ctx, s.token, http.MethodGet, gatewayOf(s.gateway)+"/api/v1/anchors/"+s.session, nil)
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusTooManyRequests:
			limited.Add(1)
			last = "429"
			if secs, err := strconv.Atoi(hdr.Get("Retry-After")); err == nil {
				wait = time.Duration(secs) * time.Second
			}
		case code != http.StatusOK:
			last = fmt.Sprintf("%d %s", code, raw)
		default:
			if err := json.Unmarshal(raw, &st); err != nil {
				return st, err
			}
			if st.Status == "sealed" && st.Receipt != "" {
				return st, nil
			}
			last = "status " + st.Status
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("last answer: %s", last)
		case <-time.After(wait):
		}
	}
}

// loadFigures says what a load did: anchors accepted a second, other
// answers, and the seal latency (the sealing block's time less the time
// the anchor was sent) at p50 and p99.
func loadFigures(subs []*submission, d time.Duration) string {
	codes := map[int]int{}
	errs := 0
	var lat []time.Duration
	for _, s := range subs {
		if s.err != nil {
			errs++
			continue
		}
		codes[s.code]++
		if !s.sealedAt.IsZero() {
			lat = append(lat, s.sealedAt.Sub(s.sent))
		}
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Millisecond)
	}
	return fmt.Sprintf("%.1f anchors/s accepted (%d in %s), answers %v, %d errors, seal latency p50 %s p99 %s",
		float64(codes[http.StatusAccepted])/d.Seconds(), codes[http.StatusAccepted], d.Round(time.Millisecond), codes, errs, pct(0.50), pct(0.99))
}

// consulServers is how many Consul servers the Pi's Consul sees as Raft
// peers, one a voter and leader.
func (c *piCluster) consulServers(ctx context.Context, pi *pis.Pi) (int, string) {
	out, err := pi.Docker(ctx, "exec", "-e", deployfiles.ConsulTokenKey+"="+c.secrets[deployfiles.ConsulTokenKey], "lucid-consul", "consul", "operator", "raft", "list-peers")
	if err != nil {
		return 0, string(out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	n := 0
	for _, l := range lines[1:] {
		if strings.Contains(l, "voter") || strings.Contains(l, "true") {
			n++
		}
	}
	return n, string(out)
}

// TestClusterOnThreePis deploys a cluster of three Pis with one
// `lucidctl deploy`, over each Pi's sshd: pi1 starts it, pi2 and pi3 join
// as voters; status sees three healthy voters and one leader, every Consul
// three servers; anchors sent through each Pi's gateway are sealed, and
// each receipt verifies against every node's chain.
func TestClusterOnThreePis(t *testing.T) {
	ctx := context.Background()
	c, events := deployCluster(t)
	pi1, pi2, pi3 := c.pis[0], c.pis[1], c.pis[2]
	if !hasEvent(events, pi1.Name, "bootstrap", "ok") {
		t.Errorf("no bootstrap ok event of pi1:\n%s", eventsOf(events, pi1.Name))
	}
	for _, pi := range []*pis.Pi{pi2, pi3} {
		if !hasEvent(events, pi.Name, "join", "ok") {
			t.Errorf("no join ok event of %s:\n%s", pi.Name, eventsOf(events, pi.Name))
		}
	}

	var st clusterStatus
	testenv.Eventually(t, 30*time.Second, "status: 3 healthy voters, one leader", func() bool {
		var code int
		st, _, code = c.status(t)
		return code == 0 && st.Cluster != nil && len(st.Cluster.Voters) == 3 && st.Cluster.HealthyVoters == 3 && st.Cluster.Leader != nil && st.Cluster.Healthy
	})
	t.Logf("leader %s (%s)", st.Cluster.Leader.ID, st.Cluster.Leader.Target)

	for _, pi := range c.pis {
		testenv.Eventually(t, 30*time.Second, pi.Name+"'s Consul sees 3 servers", func() bool {
			n, _ := c.consulServers(ctx, pi)
			return n == 3
		})
	}

	// One anchor through each gateway: 202, sealed, its receipt verified
	// against every node's chain.
	r := newChainReader(c)
	run := fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)
	for i, pi := range c.pis {
		body := c.anchorBody(run, i)
		code, raw, err := c.do(ctx, http.MethodPost, gatewayOf(pi)+"/api/v1/anchors", body)
		if err != nil || code != http.StatusAccepted {
			t.Fatalf("anchor through %s: %d %s %v", pi.Name, code, raw, err)
		}
		var a anchorStatus
		_ = json.Unmarshal(raw, &a)
		var sealed anchorStatus
		testenv.Eventually(t, 30*time.Second, "the anchor through "+pi.Name+" sealed", func() bool {
			code, raw, err := c.do(ctx, http.MethodGet, gatewayOf(pi)+"/api/v1/anchors/"+a.SessionID, nil)
			if err != nil || code != http.StatusOK {
				return false
			}
			_ = json.Unmarshal(raw, &sealed)
			return sealed.Status == "sealed" && sealed.Receipt != ""
		})
		if _, err := r.verify(ctx, sealed.Receipt); err != nil {
			t.Errorf("the anchor through %s: %v", pi.Name, err)
		}
	}
	if t.Failed() {
		return
	}

	// A short closed-loop load through one gateway, then through all
	// three, the same number of clients.
	const clients = 12
	for _, tc := range []struct {
		name     string
		gateways []*pis.Pi
	}{{"1 gateway", c.pis[:1]}, {"3 gateways", c.pis}} {
		t.Logf("%s, %d clients: %s", tc.name, clients, c.measure(t, r, tc.gateways, clients))
	}
	if t.Failed() {
		return
	}
	t.Run("another operator holds a host", func(t *testing.T) { anotherOperatorHoldsAHost(t, c) })
	t.Run("faults under load", func(t *testing.T) { faultsUnderLoad(t, c) })
}

// anotherOperatorHoldsAHost: while another operator's command (another
// laptop's deploy) holds pi3's deploy lock, pi3's engine may go down at
// any moment, so a restart of pi2's engine is refused before anything
// stops, naming that lock; status shows who holds it.
func anotherOperatorHoldsAHost(t *testing.T, c *piCluster) {
	ctx := context.Background()
	pi2, pi3 := c.pis[1], c.pis[2]
	since := time.Now().UTC().Truncate(time.Second)
	lock := fmt.Sprintf(`{"host":"laptop2","pid":4242,"user":"bob","since":%q,"expires":%q,"ttl_seconds":1800,"nonce":"e2e"}`,
		since.Format(time.RFC3339), since.Add(30*time.Minute).Format(time.RFC3339))
	if out, err := pi3.Exec(ctx, "sh", "-c", `printf '%s\n' "$1" > /srv/lucid/.deploy.lock`, "plant", lock); err != nil {
		t.Fatalf("plant the lock: %v %s", err, out)
	}
	defer func() {
		if out, err := pi3.Exec(ctx, "rm", "-f", "/srv/lucid/.deploy.lock"); err != nil {
			t.Errorf("remove the lock: %v %s", err, out)
		}
	}()
	st, raw, _ := c.status(t)
	var lockOf3 string
	for _, h := range st.Hosts {
		if h.Target == pi3.Name && h.DeployLock != nil {
			lockOf3 = h.DeployLock.User + "@" + h.DeployLock.Host
		}
	}
	if lockOf3 != "bob@laptop2" {
		t.Errorf("status does not show pi3's lock:\n%s", raw)
	}
	// Just after the load the cluster may still be settling; pi2's
	// engine is a working voter once it is (leader, follower, or a
	// candidate in an election, whatever its container's healthcheck
	// says), and then it may not go beside pi3's lock.
	c.healthyCluster(t, 2*time.Minute, "before pi2's restart beside pi3's lock")
	// The quorum check reads the engines' containers too: one whose
	// healthcheck timed out under load refuses the restart first, for
	// its own reason, and changes nothing either. Asked again until the
	// refusal is the lock's; it must never go through.
	var errOut string
	refusedForLock := testenv.PollUntil(2*time.Minute, func() bool {
		var code int
		_, errOut, code = c.p.lucidctl(t, append([]string{"restart", "--target", pi2.Name, "engine"}, c.ssh...)...)
		switch {
		case code == 0:
			t.Fatalf("pi2's engine restarted beside pi3's held lock:\n%s", errOut)
		case !strings.Contains(errOut, "nothing was changed on "+pi2.Name):
			t.Fatalf("restart of pi2's engine beside pi3's held lock: exit %d, not saying nothing changed\n%s", code, errOut)
		}
		return strings.Contains(errOut, "its host's deploy lock is held by bob@laptop2 (pid 4242)")
	})
	if !refusedForLock {
		t.Errorf("restart of pi2's engine beside pi3's held lock was never refused for the lock:\n%s", errOut)
	}
}

// healthyCluster waits until `lucidctl status --target home` says the
// cluster is healthy with three healthy voters, and returns the leader's
// target.
func (c *piCluster) healthyCluster(t *testing.T, within time.Duration, what string) string {
	t.Helper()
	var st clusterStatus
	var raw string
	if !testenv.PollUntil(within, func() bool {
		st, raw, _ = c.status(t)
		// The engines' view, not each host's health: on this shared
		// machine under load the Pis' health checks time out now and then
		// (a service shows unhealthy for a while), which says nothing of
		// the chain.
		if st.Cluster == nil || !st.Cluster.Quorum || len(st.Cluster.Errors) > 0 || st.Cluster.Leader == nil || st.Cluster.Leader.Target == "" || len(st.Cluster.Voters) != 3 {
			return false
		}
		for _, v := range st.Cluster.Voters {
			if v.State != "leader" && v.State != "follower" {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("%s: the cluster not healthy with 3 voters within %s; last status:\n%s", what, within, raw)
	}
	return st.Cluster.Leader.Target
}

// height is a node's chain height, read through its gateway; -1 when it
// does not answer.
func (c *piCluster) height(ctx context.Context, pi *pis.Pi) int64 {
	info, err := c.chainInfo(ctx, pi)
	if err != nil {
		return -1
	}
	return int64(info.Height)
}

// advances waits until each of the Pis' chains is at least n blocks past
// where the first of them was.
func (c *piCluster) advances(t *testing.T, ctx context.Context, on []*pis.Pi, n int64, within time.Duration, what string) {
	t.Helper()
	var from int64 = -1
	testenv.Eventually(t, within, what, func() bool {
		if from < 0 {
			from = c.height(ctx, on[0])
			return false
		}
		for _, pi := range on {
			if c.height(ctx, pi) < from+n {
				return false
			}
		}
		return true
	})
}

// caughtUp waits until every node's chain has the same height.
func (c *piCluster) caughtUp(t *testing.T, ctx context.Context, within time.Duration, what string) {
	t.Helper()
	testenv.Eventually(t, within, what, func() bool {
		h := c.height(ctx, c.pis[0])
		for _, pi := range c.pis[1:] {
			if h < 0 || c.height(ctx, pi) != h {
				return false
			}
		}
		return true
	})
}

// awaitLeader waits until one of among says it leads.
func (c *piCluster) awaitLeader(t *testing.T, ctx context.Context, among []*pis.Pi, what string) {
	t.Helper()
	testenv.Eventually(t, time.Minute, what, func() bool {
		for _, pi := range among {
			if info, err := c.chainInfo(ctx, pi); err == nil && info.Leader {
				return true
			}
		}
		return false
	})
}

// without is the cluster's Pis but pi.
func (c *piCluster) without(pi *pis.Pi) []*pis.Pi {
	return slices.DeleteFunc(slices.Clone(c.pis), func(p *pis.Pi) bool { return p == pi })
}

func (c *piCluster) piNamed(name string) *pis.Pi {
	for _, pi := range c.pis {
		if pi.Name == name {
			return pi
		}
	}
	return nil
}

// blockWatch samples each node's newest block while the faults run, so
// that two nodes holding different blocks at one height are caught while
// it is so, not only in the history at the end.
type blockWatch struct {
	mu       sync.Mutex
	seen     map[uint64]seenBlock
	diverged []string
	samples  int
	stop     func()
}

// seenBlock is the first block a watch saw at a height, and on which node.
type seenBlock struct{ hash, on string }

// watchBlocks starts a watch over c's nodes; stop ends it.
func (c *piCluster) watchBlocks(ctx context.Context) *blockWatch {
	w := &blockWatch{seen: map[uint64]seenBlock{}}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	w.stop = func() { cancel(); <-done }
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			for _, pi := range c.pis {
				// A Pi that is off or cut off does not answer; the
				// others are still read.
				rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
				if info, err := c.chainInfo(rctx, pi); err == nil && info.Height > 0 {
					if b, err := c.block(rctx, pi, info.Height); err == nil {
						w.note(info.Height, b.Hash, pi.Name)
					}
				}
				rcancel()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// note records that node on held hash at height.
func (w *blockWatch) note(height uint64, hash, on string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples++
	first, ok := w.seen[height]
	switch {
	case !ok:
		w.seen[height] = seenBlock{hash, on}
	case first.hash != hash:
		w.diverged = append(w.diverged, fmt.Sprintf("height %d: %s held %s, %s %s", height, first.on, first.hash, on, hash))
	}
}

// faultsUnderLoad drives the faults a cluster must survive while clients
// send anchors through every gateway, then checks the history: every
// anchor that got a 202 is sealed exactly once, every node holds the same
// block at every height (at the end, and in each node's newest block
// sampled every second during the faults), every receipt verifies against
// every node's chain, and every node has caught up.
func faultsUnderLoad(t *testing.T, c *piCluster) {
	ctx := context.Background()
	engine, _ := catalog.Lookup("engine")
	leader := c.healthyCluster(t, time.Minute, "before the faults")

	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loaded := make(chan []*submission, 1)
	began := time.Now()
	run := fmt.Sprintf("%08x", time.Now().UnixNano()&0xffffffff)
	go func() { loaded <- c.load(lctx, t, run, c.pis, 1) }()
	watch := c.watchBlocks(ctx)
	defer watch.stop()

	// The leader's engine is restarted, as a deploy restarts it: it hands
	// its leadership over as it stops.
	old := c.piNamed(leader)
	others := c.without(old)
	restarted := time.Now()
	restartErr := make(chan error, 1)
	go func() {
		out, err := old.Docker(ctx, "restart", engine.Container)
		if err != nil {
			err = fmt.Errorf("restart the leader's engine: %w: %s", err, out)
		}
		restartErr <- err
	}()
	c.awaitLeader(t, ctx, others, "a new leader after the leader's engine was restarted")
	t.Logf("the leader's engine (%s) restarted: a new leader in %s", leader, time.Since(restarted).Round(time.Millisecond))
	if err := <-restartErr; err != nil {
		t.Fatal(err)
	}
	// A leader starved of CPU may step down, cut off from its quorum,
	// between the test's read and the stop: it then says it stopped while
	// not leading, and has nothing to hand over; or hear of the next term
	// only after Raft's wait for the hand-over ended (TestStoppingLeaderHandsOver
	// checks the hand-over itself). Only this stop's log counts, not an
	// earlier stop of the same container.
	switch out, _ := old.Docker(ctx, "logs", "--since", restarted.Format(time.RFC3339Nano), engine.Container); {
	case bytes.Contains(out, []byte(`"msg":"leadership handed over"`)):
	case bytes.Contains(out, []byte(`"msg":"stopping while not leading: no leadership to hand over"`)):
		t.Logf("the leader's engine (%s) had lost the leadership before its stop: no hand-over to check", leader)
	case bytes.Contains(out, []byte(`"msg":"leadership moved on, though Raft's wait for the hand-over ended first"`)):
		t.Logf("the leader's engine (%s), starved, stepped down only after Raft's wait for the hand-over", leader)
	default:
		t.Errorf("the restarted leader's engine did not hand its leadership over; its log:\n%s", out)
	}
	leader = c.healthyCluster(t, 2*time.Minute, "after the leader's engine was restarted")
	c.caughtUp(t, ctx, time.Minute, "the restarted engine caught up")
	t.Logf("the restarted engine back and caught up %s after the restart", time.Since(restarted).Round(time.Millisecond))

	// The leader's engine crashes: the others elect a new leader.
	old = c.piNamed(leader)
	others = c.without(old)
	killed := time.Now()
	if err := old.Kill(ctx, engine.Container); err != nil {
		t.Fatal(err)
	}
	c.awaitLeader(t, ctx, others, "a new leader after the leader's engine was killed")
	t.Logf("the leader's engine (%s) killed: a new leader in %s", leader, time.Since(killed).Round(time.Millisecond))
	c.advances(t, ctx, others, 2, time.Minute, "blocks go on without the killed engine")
	leader = c.healthyCluster(t, 2*time.Minute, "after the leader's engine was killed")
	c.caughtUp(t, ctx, time.Minute, "the killed engine caught up")
	t.Logf("the killed engine back and caught up %s after the kill", time.Since(killed).Round(time.Millisecond))

	// A whole Pi loses its power, a follower's, and boots again.
	var off *pis.Pi
	for _, pi := range c.pis {
		if pi.Name != leader {
			off = pi
			break
		}
	}
	cut := time.Now()
	if err := off.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	others = c.without(off)
	c.advances(t, ctx, others, 2, time.Minute, "blocks go on while "+off.Name+" is off")
	if err := off.Start(ctx); err != nil {
		t.Fatal(err)
	}
	leader = c.healthyCluster(t, 3*time.Minute, "after "+off.Name+" was powered off and booted")
	c.caughtUp(t, ctx, time.Minute, off.Name+" caught up after its boot")
	t.Logf("%s powered off, booted, back in the cluster and caught up %s after the cut", off.Name, time.Since(cut).Round(time.Millisecond))

	// The leader's Pi is cut off from the others, then joined again.
	cutOff := c.piNamed(leader)
	cut = time.Now()
	if err := cutOff.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	others = c.without(cutOff)
	c.awaitLeader(t, ctx, others, "a leader on the majority side of the partition")
	t.Logf("%s (the leader) cut off: a leader on the majority side in %s", cutOff.Name, time.Since(cut).Round(time.Millisecond))
	c.advances(t, ctx, others, 2, time.Minute, "blocks go on while "+cutOff.Name+" is cut off")
	if err := cutOff.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	c.healthyCluster(t, 2*time.Minute, "after "+cutOff.Name+"'s partition healed")
	c.caughtUp(t, ctx, time.Minute, cutOff.Name+" caught up after the partition")
	t.Logf("%s partitioned and healed, caught up %s after the cut", cutOff.Name, time.Since(cut).Round(time.Millisecond))

	// Every Pi shuts down, then all boot again.
	cut = time.Now()
	each := func(f func(*pis.Pi) error) {
		errs := make([]error, len(c.pis))
		var wg sync.WaitGroup
		for i, pi := range c.pis {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = f(pi) }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	each(func(pi *pis.Pi) error { return pi.Stop(ctx) })
	each(func(pi *pis.Pi) error { return pi.Start(ctx) })
	c.healthyCluster(t, 5*time.Minute, "after all three Pis restarted")
	c.advances(t, ctx, c.pis, 2, time.Minute, "blocks go on after all three restarted")
	t.Logf("all three Pis shut down and booted: the cluster healthy and sealing again %s after the shutdown began", time.Since(cut).Round(time.Millisecond))

	stopLoad()
	subs := <-loaded
	took := time.Since(began)
	watch.stop()
	for _, d := range watch.diverged {
		t.Errorf("while the faults ran, two nodes held different blocks: %s", d)
	}

	// The history.
	r := newChainReader(c)
	c.awaitSealed(t, r, subs, 2*time.Minute)
	c.caughtUp(t, ctx, time.Minute, "every node at the same height at the end")
	perGateway := map[string]int{}
	for _, s := range subs {
		if s.code == http.StatusAccepted {
			perGateway[s.gateway.Name]++
		}
	}
	t.Logf("under the faults: %s; accepted by gateway %v", loadFigures(subs, took), perGateway)

	// Every node holds the same block at every height, and each accepted
	// anchor is in exactly one block.
	top := c.height(ctx, c.pis[0])
	sealedIn := map[string][]uint64{}
	for h := uint64(0); h <= uint64(top); h++ {
		var first *chain.Block
		for _, pi := range c.pis {
			b, err := r.block(ctx, pi, h)
			if err != nil {
				if h == 0 {
					break // no genesis at height 0
				}
				t.Fatal(err)
			}
			if first == nil {
				first = b
				continue
			}
			if b.Hash != first.Hash {
				t.Errorf("height %d: %s holds %s, %s %s", h, c.pis[0].Name, first.Hash, pi.Name, b.Hash)
			}
		}
		if first == nil {
			continue
		}
		if seen, ok := watch.seen[h]; ok && seen.hash != first.Hash {
			t.Errorf("height %d: %s held %s while the faults ran; every node holds %s now", h, seen.on, seen.hash, first.Hash)
		}
		for _, raw := range first.Transactions {
			var tx chain.Transaction
			if err := json.Unmarshal(raw, &tx); err != nil {
				t.Fatalf("block %d: %v", h, err)
			}
			if tx.Anchor != nil {
				sealedIn[tx.Anchor.SessionID] = append(sealedIn[tx.Anchor.SessionID], h)
			}
		}
	}
	for _, s := range subs {
		if s.code == http.StatusAccepted && len(sealedIn[s.session]) != 1 {
			t.Errorf("anchor %s (202 through %s at %s) is in blocks %v, want exactly one", s.session, s.gateway.Name, s.sent.Format(time.RFC3339Nano), sealedIn[s.session])
		}
	}
	for sid, hs := range sealedIn {
		if len(hs) > 1 {
			t.Errorf("anchor %s sealed %d times, in blocks %v", sid, len(hs), hs)
		}
	}
	t.Logf("history: %d blocks identical on the 3 nodes, %d anchors in them; %d samples of the nodes' newest blocks taken during the faults, at %d heights", top, len(sealedIn), watch.samples, len(watch.seen))
	for _, pi := range c.pis {
		for _, name := range []string{"lucid-api-gateway", "lucid-session-anchoring", engine.Container} {
			running, restarts := containerRuns(ctx, pi, name)
			t.Logf("%s: %s running=%v restarts=%d", pi.Name, name, running, restarts)
			if restarts > 0 {
				// Why it exited: the end of its log before the last start.
				out, _ := pi.Docker(ctx, "logs", "--tail", "30", name)
				t.Logf("%s: %s's log:\n%s", pi.Name, name, out)
			}
		}
	}
}
