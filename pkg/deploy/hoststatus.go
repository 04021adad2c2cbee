package deploy

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/sshx"
)

// StatusOptions tune what Status reads.
type StatusOptions struct {
	// OperatorToken is the operator's token (LUCID_OPERATOR_TOKEN): the
	// engine's chain and consensus and the data chain's status answer only
	// the operator (or a mesh member). Without it those figures are
	// unknown. Only the credential derived from it for each service on
	// this target (auth.OperatorCredential, for Config.Name) is sent, to
	// that service alone, through the connection; neither appears in the
	// result or an error.
	OperatorToken string
	// Timeout bounds each question asked of a service, and the host's own
	// commands (default 5 s).
	Timeout time.Duration
}

// HostStatus is what a deployed host runs and how it is: the current
// release, each container, the host's resources and what the services say
// about themselves. A figure that could not be read is left out and named
// in Unknown with the reason; only the containers decide Healthy.
type HostStatus struct {
	Target string `json:"target"`
	// Release is the current release; nil when the host has none.
	Release  *Release       `json:"release"`
	Services []ServiceState `json:"services"`
	Host     HostFacts      `json:"host"`
	Reports  ServiceReports `json:"reports"`
	// Unknown maps each figure that could not be read to why.
	Unknown map[string]string `json:"unknown,omitempty"`
	// Problems are what makes the host unhealthy, in words.
	Problems []string `json:"problems"`
	Healthy  bool     `json:"healthy"`
	// DeployLock is who holds the host's deploy lock, while a deploy,
	// rollback, restart, stop, prune or restore runs there; nil when it is
	// free (or the lock left behind has expired).
	DeployLock *LockHolder `json:"deploy_lock,omitempty"`
	// StaleCredentials is set when the host's services refused the
	// operator's credentials because its current release was rendered
	// before per-host ones (deployfiles.OperatorHashes' Stale): the
	// figures that need them stay unknown until the host is deployed.
	StaleCredentials *StaleCredentials `json:"stale_credentials,omitempty"`
}

// StaleCredentials is a release whose services hold the operator's
// credentials in the form of before per-host ones, which lucidctl no
// longer sends.
type StaleCredentials struct {
	Release string `json:"release"`
	// EngineNode is the node id the release's engine env file gives the
	// engine: a cluster host's target name, which its Raft state keeps;
	// "" for a single Pi's release (its compose file names the engine).
	EngineNode string `json:"engine_node,omitempty"`
}

// LockHolder is a live deploy lock: who took it, from where, and when it
// expires unless renewed, by this machine's clock (the host judges it by
// its own, from the lock's age: Expires is that, moved to this clock).
type LockHolder struct {
	User    string    `json:"user"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
	// nonce is the lock's own, to tell this process's locks.
	nonce string
}

// Ours reports whether this process took the lock (one whose removal
// failed, still on a host this process is done with). Its nonce says so,
// not its machine's name and pid, which another machine may share.
func (l *LockHolder) Ours() bool {
	_, ok := ownLocks.Load(l.nonce)
	return l.nonce != "" && ok
}

// ownLocks holds the nonce of every lock this process took.
var ownLocks sync.Map

func (l *LockHolder) String() string {
	return fmt.Sprintf("%s@%s (pid %d) since %s", l.User, l.Host, l.PID, l.Since.Format(time.RFC3339))
}

// ServiceState is one container of the deployment, as its Docker Engine
// sees it.
type ServiceState struct {
	// Service is the catalog's name (engine, gateway, ...) or "consul".
	Service   string `json:"service"`
	Container string `json:"container"`
	// State is Docker's: running, restarting, exited, dead, created,
	// paused, or "missing" when the release's container does not exist.
	State string `json:"state"`
	// Health is the healthcheck's verdict: healthy, unhealthy, starting,
	// or "none" without a healthcheck.
	Health   string `json:"health"`
	Restarts int    `json:"restarts"`
	// StartedAt is when the container last started; UptimeSeconds counts
	// from it while it runs.
	StartedAt     time.Time `json:"started_at,omitzero"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	Image         string    `json:"image,omitempty"`
	// ImageID is the image's ID (sha256:…), as release.json records it.
	ImageID string `json:"image_id,omitempty"`
	// CertNotAfter is when the service's mesh certificate expires, seen in
	// the TLS handshake with it (mTLS only).
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
}

// HostFacts are the host's own figures.
type HostFacts struct {
	Docker string `json:"docker,omitempty"`
	// Disk is the filesystem of the deploy directory.
	Disk   *Disk   `json:"disk,omitempty"`
	Memory *Memory `json:"memory,omitempty"`
	// Load is the 1, 5 and 15 minute load average.
	Load []float64 `json:"load,omitempty"`
	// ClockSkewSeconds is the host's clock minus this machine's.
	ClockSkewSeconds *float64 `json:"clock_skew_seconds,omitempty"`
}

// Disk is a filesystem's size and free space.
type Disk struct {
	Path       string `json:"path"`
	TotalBytes int64  `json:"total_bytes"`
	FreeBytes  int64  `json:"free_bytes"`
}

// Memory is the host's memory.
type Memory struct {
	TotalBytes     int64 `json:"total_bytes"`
	AvailableBytes int64 `json:"available_bytes"`
}

// ServiceReports are what the services say about themselves.
type ServiceReports struct {
	ChainHeight       *uint64   `json:"chain_height,omitempty"`
	NewestBlockTime   time.Time `json:"newest_block_time,omitzero"`
	NewestBlockAgeSec *float64  `json:"newest_block_age_seconds,omitempty"`
	// RaftRole is the engine's Raft state: leader, follower, candidate.
	RaftRole string `json:"raft_role,omitempty"`
	// The rest of the engine's consensus status, read with RaftRole: its
	// Raft server id, current term, last log index and applied index, the
	// leader it knows (empty when none), and the Raft configuration.
	RaftNodeID       string             `json:"raft_node_id,omitempty"`
	RaftTerm         *uint64            `json:"raft_term,omitempty"`
	RaftLastIndex    *uint64            `json:"raft_last_index,omitempty"`
	RaftAppliedIndex *uint64            `json:"raft_applied_index,omitempty"`
	RaftLeaderID     string             `json:"raft_leader_id,omitempty"`
	RaftServers      []engineapi.Server `json:"raft_servers,omitempty"`
	// ValidatorSealed says whether the engine's own validator key is
	// among the chain's validators, as its chain says: an engine whose
	// key is not must not lead, every block it made would be refused.
	ValidatorSealed *bool `json:"validator_sealed,omitempty"`
	// RaftCommitLag is how many log entries the leader has applied that
	// this engine has not: 0 on the leader. It takes the leader's figures
	// from the leader's host in the same status run (SetCommitLag), so it
	// is unknown for a host read alone whose engine follows another.
	RaftCommitLag *uint64 `json:"raft_commit_lag,omitempty"`
	// Fence is the engine's restore fence and the forks accepted when
	// lifting one; absent when it was never fenced or forked. A fenced
	// engine produces no block: the host is then unhealthy.
	Fence *engineapi.FenceStatus `json:"fence,omitempty"`
	// AnchorQueue is how many anchors wait to be sealed, and
	// OldestPendingAnchor when the oldest of them was accepted (absent
	// when none waits).
	AnchorQueue         *int64    `json:"anchor_queue,omitempty"`
	OldestPendingAnchor time.Time `json:"oldest_pending_anchor,omitzero"`
	// DataChainBytes is the size of the data chain's pack files, with its
	// chunk and session counts.
	DataChainBytes    *int64 `json:"data_chain_bytes,omitempty"`
	DataChainChunks   *int64 `json:"data_chain_chunks,omitempty"`
	DataChainSessions *int64 `json:"data_chain_sessions,omitempty"`
	// CertNotAfter is the earliest expiry of the services' mesh
	// certificates (each service's is in its ServiceState).
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
	// GatewayTLS is the gateway's public certificates, from its metrics;
	// absent when it serves plain HTTP.
	GatewayTLS *GatewayTLS `json:"gateway_tls,omitempty"`
}

// The figures Unknown names.
const (
	FigureRelease      = "release"
	FigureDocker       = "docker"
	FigureDisk         = "disk"
	FigureMemory       = "memory"
	FigureLoad         = "load"
	FigureClock        = "clock_skew"
	FigureDeployLock   = "deploy_lock"
	FigureChainHeight  = "chain_height"
	FigureNewestBlock  = "newest_block"
	FigureRaftRole     = "raft_role"
	FigureCommitLag    = "raft_commit_lag"
	FigureFence        = "fence"
	FigureAnchorQueue  = "anchor_queue"
	FigureOldestAnchor = "oldest_pending_anchor"
	FigureDataChain    = "data_chain_size"
	FigureCertificates = "cert_expiry"
	FigureGatewayTLS   = "gateway_tls"
)

// StatusOf reads the hosts of configs at once, as Status does each:
// hosts[i] is configs[i]'s status, or nil with errs[i] saying why.
func StatusOf(ctx context.Context, configs []Config, o StatusOptions) (hosts []*HostStatus, errs []error) {
	hosts, errs = make([]*HostStatus, len(configs)), make([]error, len(configs))
	var wg sync.WaitGroup
	for i, c := range configs {
		wg.Go(func() {
			d, err := New(c)
			if err != nil {
				errs[i] = err
				return
			}
			defer d.Close()
			hosts[i], errs[i] = d.Status(ctx, o)
		})
	}
	wg.Wait()
	return hosts, errs
}

// Status reads the host: it fails only when the host's Docker Engine
// cannot be asked which containers run (without that there is no status
// to give); every other figure that cannot be read is named in Unknown.
func (d *Deployer) Status(ctx context.Context, o StatusOptions) (*HostStatus, error) {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	h := d.h
	st := &HostStatus{Target: d.cfg.Name, Unknown: map[string]string{}, Services: []ServiceState{}, Problems: []string{}}
	unknown := func(fig string, err error) { st.Unknown[fig] = oneLine(err.Error()) }

	list, err := h.projectContainers(ctx)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards st.Unknown and st.Reports from the readers
	lockedUnknown := func(fig string, err error) { mu.Lock(); defer mu.Unlock(); unknown(fig, err) }

	// The host's own commands get the same bound as the services' calls:
	// a host whose disk stopped answering (sshd still up) must not hold
	// status, or the quorum check that reads it under the deploy lock.
	wg.Go(func() {
		rctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		cur, err := h.current(rctx)
		switch {
		case err != nil:
			lockedUnknown(FigureRelease, err)
		case cur != nil:
			st.Release = cur
		}
	})
	wg.Go(func() {
		fctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		d.hostFacts(fctx, st, lockedUnknown)
	})

	byService := byComposeService(list)
	for _, svc := range expectedContainers(byService) {
		s := ServiceState{Service: svc.name, Container: svc.container, State: "missing", Health: "none"}
		if c, ok := byService[svc.container]; ok {
			s.State, s.Image, s.ImageID = c.State, c.Image, c.ImageID
			if in, err := h.docker.ContainerInspect(ctx, c.ID); err == nil {
				s.Restarts = in.RestartCount
				if in.State != nil {
					if t, err := time.Parse(time.RFC3339Nano, in.State.StartedAt); err == nil && t.Year() > 1 {
						s.StartedAt = t.UTC()
					}
					if in.State.Health != nil {
						s.Health = in.State.Health.Status
					}
				}
				if in.Image != "" {
					s.ImageID = in.Image
				}
			}
		}
		switch {
		case s.State == "missing":
			st.Problems = append(st.Problems, svc.name+": no container "+svc.container)
		case s.State != "running":
			st.Problems = append(st.Problems, fmt.Sprintf("%s: %s", svc.name, s.State))
		case s.Health != "healthy" && s.Health != "none":
			st.Problems = append(st.Problems, fmt.Sprintf("%s: %s", svc.name, s.Health))
		}
		st.Services = append(st.Services, s)
	}

	refused := d.operatorRefusal(o.OperatorToken)
	wg.Go(func() { d.readReports(ctx, o, st, byService, refused, &mu, lockedUnknown) })
	wg.Wait()
	st.StaleCredentials = refused.staleCredentials()
	// Ages by the host's clock, which stamped what they count from.
	now := d.cfg.Now()
	if skew := st.Host.ClockSkewSeconds; skew != nil {
		now = now.Add(time.Duration(*skew * float64(time.Second)))
	}
	for i := range st.Services {
		if s := &st.Services[i]; s.State == "running" && !s.StartedAt.IsZero() {
			s.UptimeSeconds = max(0, int64(now.Sub(s.StartedAt).Seconds()))
		}
	}
	if t := st.Reports.NewestBlockTime; !t.IsZero() {
		age := float64(max(0, now.Sub(t).Milliseconds()/100)) / 10
		st.Reports.NewestBlockAgeSec = &age
	}
	if st.Release == nil && st.Unknown[FigureRelease] == "" {
		st.Problems = append(st.Problems, "no current release")
	}
	if len(st.Unknown) == 0 {
		st.Unknown = nil
	}
	st.Healthy = len(st.Problems) == 0
	return st, nil
}

// readFence reads the engine's restore fence (GET /api/v1/fence: 404 when
// it was never fenced nor forked); a fenced engine is a problem, since it
// produces no block until the operator lifts the fence.
func (d *Deployer) readFence(ctx context.Context, c *serviceClient, st *HostStatus, fenced bool, mu *sync.Mutex, unknown func(string, error)) {
	var fs engineapi.FenceStatus
	body, err := c.get(ctx, "/api/v1/fence", true)
	if err == nil {
		if uerr := json.Unmarshal(body, &fs); uerr != nil {
			err = fmt.Errorf("engine /api/v1/fence: %w", uerr)
		}
	}
	var se *statusError
	switch {
	case errors.As(err, &se) && se.code == http.StatusNotFound:
		if !fenced {
			return
		}
		fs = engineapi.FenceStatus{Fenced: true} // an engine that says so on /api/v1/chain only
	case err != nil:
		// Without the operator's credential (another laptop, a host
		// rendered before per-host ones) the fence's details are not
		// read, but the engine's public gauge still says whether it is
		// fenced: a fenced engine is never shown healthy for want of them.
		if v, merr := c.metric(ctx, "lucid_engine_fenced"); merr == nil && v == 1 {
			fenced = true
		}
		if !fenced {
			unknown(FigureFence, err)
			return
		}
		fs = engineapi.FenceStatus{Fenced: true}
	}
	mu.Lock()
	defer mu.Unlock()
	st.Reports.Fence = &fs
	if fs.Fenced {
		st.Problems = append(st.Problems, "engine: fenced after a restore, producing no block until the operator lifts the fence (lucidctl maintenance fence status|lift)")
	}
}

type expected struct{ name, container string }

// expectedContainers are the six services, and Consul when the release
// runs it.
func expectedContainers(running map[string]container.Summary) []expected {
	var out []expected
	for _, s := range catalog.Services {
		out = append(out, expected{s.Name, s.Container})
	}
	if _, ok := running[deployfiles.ConsulContainer]; ok {
		out = append(out, expected{"consul", deployfiles.ConsulContainer})
	}
	return out
}

// hostFacts reads the deploy directory's filesystem, memory, load, clock
// and Docker version.
func (d *Deployer) hostFacts(ctx context.Context, st *HostStatus, unknown func(string, error)) {
	h := d.h
	if v, err := h.docker.ServerVersion(ctx); err != nil {
		unknown(FigureDocker, err)
	} else {
		st.Host.Docker = v.Version
	}
	const mark = "--lucid-status--"
	// The lock last: its age by the host's clock ("-" if stat cannot
	// say), then its content; nothing when there is none, or when it was
	// released while being read. It is only ever replaced by rename, so a
	// read without its guard sees a whole one. A file there that cannot be
	// read gives its age alone, and fails no other figure.
	lock := sshx.Quote(h.lockPath())
	cmd := `d=` + sshx.Quote(h.dir) + `; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d"; echo ` + mark +
		`; cat /proc/meminfo; echo ` + mark + `; cat /proc/loadavg; echo ` + mark + `; date +%s.%N; echo ` + mark +
		`; l=` + lock + `; if [ -e "$l" ]; then age=-; m=$(stat -c %Y -- "$l" 2>/dev/null) && age=$(( $(date +%s) - m )); ` +
		`if c=$(cat -- "$l" 2>/dev/null); then echo "$age"; printf '%s\n' "$c"; elif [ -e "$l" ]; then echo "$age"; fi; fi; true`
	before := d.cfg.Now()
	start := time.Now()
	out, err := h.ssh.Run(ctx, cmd, nil)
	mid := before.Add(time.Since(start) / 2)
	if err != nil {
		for _, f := range []string{FigureDisk, FigureMemory, FigureLoad, FigureClock, FigureDeployLock} {
			unknown(f, err)
		}
		return
	}
	parts := strings.Split(string(out), mark+"\n")
	for len(parts) < 5 {
		parts = append(parts, "")
	}
	if disk, err := parseDF(parts[0]); err != nil {
		unknown(FigureDisk, err)
	} else {
		st.Host.Disk = disk
	}
	if mem, err := parseMeminfo(parts[1]); err != nil {
		unknown(FigureMemory, err)
	} else {
		st.Host.Memory = mem
	}
	if load, err := parseLoad(parts[2]); err != nil {
		unknown(FigureLoad, err)
	} else {
		st.Host.Load = load
	}
	if secs, err := strconv.ParseFloat(strings.TrimSpace(parts[3]), 64); err != nil {
		unknown(FigureClock, fmt.Errorf("`date +%%s.%%N` answered %q", strings.TrimSpace(parts[3])))
	} else {
		skew := secs - float64(mid.UnixNano())/1e9
		skew = float64(int64(skew*1000)) / 1000
		st.Host.ClockSkewSeconds = &skew
	}
	if l, err := parseDeployLock(parts[4], mid); err != nil {
		unknown(FigureDeployLock, err)
	} else {
		st.DeployLock = l
	}
}

// parseDeployLock reads what hostFacts printed of the lock file at now
// (this machine's clock): nothing, or its age and content. An expired
// lock is none.
func parseDeployLock(out string, now time.Time) (*LockHolder, error) {
	if strings.TrimSpace(out) == "" {
		return nil, nil
	}
	ageText, raw, _ := strings.Cut(out, "\n")
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("the lock file is there but could not be read")
	}
	var held lockInfo
	if err := json.Unmarshal([]byte(raw), &held); err != nil {
		return nil, fmt.Errorf("the lock file holds no lock: %w", err)
	}
	age, ageErr := strconv.ParseInt(strings.TrimSpace(ageText), 10, 64)
	if ageErr == nil && age < 0 {
		ageErr = errors.New("written in the future by the host's clock")
	}
	if lockExpired(held, age, ageErr) {
		return nil, nil
	}
	l := &LockHolder{User: held.User, Host: held.Host, PID: held.PID, Since: held.Since, Expires: held.Expires, nonce: held.Nonce}
	if held.TTL > 0 && ageErr == nil {
		l.Expires = now.Add(time.Duration(held.TTL-age) * time.Second).UTC()
	}
	return l, nil
}

func parseDF(out string) (*Disk, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 6 {
		return nil, fmt.Errorf("cannot read df's answer %q", oneLine(out))
	}
	total, err1 := strconv.ParseInt(f[1], 10, 64)
	free, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("cannot read df's answer %q", oneLine(out))
	}
	return &Disk{Path: f[len(f)-1], TotalBytes: total * 1024, FreeBytes: free * 1024}, nil
}

func parseMeminfo(out string) (*Memory, error) {
	m := &Memory{}
	for line := range strings.SplitSeq(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			m.TotalBytes = n * 1024
		case "MemAvailable":
			m.AvailableBytes = n * 1024
		}
	}
	if m.TotalBytes == 0 {
		return nil, errors.New("/proc/meminfo has no MemTotal")
	}
	return m, nil
}

func parseLoad(out string) ([]float64, error) {
	f := strings.Fields(out)
	if len(f) < 3 {
		return nil, fmt.Errorf("cannot read /proc/loadavg: %q", oneLine(out))
	}
	var load []float64
	for _, s := range f[:3] {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("cannot read /proc/loadavg: %q", oneLine(out))
		}
		load = append(load, v)
	}
	return load, nil
}

// meshBundlePath is the mesh CA's trust bundle in the mesh controller's
// container (its data volume).
var meshBundlePath = path.Join(deployfiles.DataRoot, catalog.MeshService, "ca", "bundle.pem")

// readReports asks the services about themselves through the connection:
// each on its port published on the host's loopback, over TLS verified
// against the mesh CA's bundle when the mesh is on.
// refused explains a service's refusal of the operator's credentials.
func (d *Deployer) readReports(ctx context.Context, o StatusOptions, st *HostStatus, running map[string]container.Summary, refused *operatorRefusal, mu *sync.Mutex, unknown func(string, error)) {
	bundle, bundleErr := d.meshBundle(ctx, running)
	clients := map[string]*serviceClient{}
	var cmu sync.Mutex
	client := func(name string) (*serviceClient, error) {
		cmu.Lock()
		defer cmu.Unlock()
		if c, ok := clients[name]; ok {
			return c, c.err
		}
		c := d.serviceClient(ctx, name, running, bundle, bundleErr, o, refused)
		clients[name] = c
		return c, c.err
	}
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	reports := &st.Reports
	var wg sync.WaitGroup

	wg.Go(func() { // the engine: chain and Raft, else the height from /metrics
		c, err := client("engine")
		if err != nil {
			for _, f := range []string{FigureChainHeight, FigureNewestBlock, FigureRaftRole} {
				unknown(f, err)
			}
			return
		}
		var info engineapi.ChainInfo
		if err := c.getJSON(ctx, "/api/v1/chain", true, &info); err != nil {
			unknown(FigureNewestBlock, err)
			if h, merr := c.metric(ctx, "lucid_engine_height"); merr == nil {
				v := uint64(h)
				mu.Lock()
				reports.ChainHeight = &v
				mu.Unlock()
			} else {
				unknown(FigureChainHeight, err)
			}
		} else {
			mu.Lock()
			reports.ChainHeight = &info.Height
			if !info.HeadTime.IsZero() {
				reports.NewestBlockTime = info.HeadTime.UTC()
			}
			if info.ValidatorKey != "" {
				sealed := slices.Contains(info.Validators, info.ValidatorKey)
				reports.ValidatorSealed = &sealed
			}
			mu.Unlock()
			if info.HeadTime.IsZero() {
				unknown(FigureNewestBlock, errors.New("the chain has no block yet"))
			}
		}
		d.readFence(ctx, c, st, info.Fenced, mu, unknown)
		var cs engineapi.ConsensusStatus
		if err := c.getJSON(ctx, "/api/v1/consensus/status", true, &cs); err != nil {
			unknown(FigureRaftRole, err)
		} else {
			mu.Lock()
			reports.RaftRole, reports.RaftNodeID, reports.RaftLeaderID = cs.State, cs.NodeID, cs.LeaderID
			reports.RaftTerm, reports.RaftLastIndex, reports.RaftAppliedIndex = &cs.Term, &cs.LastIndex, &cs.AppliedIndex
			reports.RaftServers = cs.Servers
			mu.Unlock()
		}
	})
	wg.Go(func() { // session anchoring: its queue and how old its oldest anchor is
		c, err := client("anchoring")
		if err != nil {
			unknown(FigureAnchorQueue, err)
			unknown(FigureOldestAnchor, err)
			return
		}
		m, err := c.metrics(ctx, "lucid_anchoring_pending", "lucid_anchoring_oldest_pending_timestamp_seconds")
		if err != nil {
			unknown(FigureAnchorQueue, err)
			unknown(FigureOldestAnchor, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		unknown := func(fig string, err error) { st.Unknown[fig] = oneLine(err.Error()) } // mu is held
		if v, ok := m["lucid_anchoring_pending"]; ok {
			n := int64(v)
			reports.AnchorQueue = &n
		} else {
			unknown(FigureAnchorQueue, errors.New("anchoring /metrics has no lucid_anchoring_pending"))
		}
		switch v, ok := m["lucid_anchoring_oldest_pending_timestamp_seconds"]; {
		case !ok:
			unknown(FigureOldestAnchor, errors.New("this version of session anchoring does not report its oldest pending anchor"))
		case v > 0:
			reports.OldestPendingAnchor = time.Unix(0, int64(v*1e9)).UTC()
		}
	})
	wg.Go(func() { // the gateway: its public certificates' expiry
		c, err := client(catalog.GatewayService)
		if err != nil {
			unknown(FigureGatewayTLS, err)
			return
		}
		body, err := c.get(ctx, "/metrics", false)
		if err != nil {
			unknown(FigureGatewayTLS, err)
			return
		}
		g, err := ParseGatewayTLS(body, time.Now())
		if err != nil {
			unknown(FigureGatewayTLS, err)
			return
		}
		mu.Lock()
		reports.GatewayTLS = g
		mu.Unlock()
	})
	wg.Go(func() { // the data chain: its size
		c, err := client("datachain")
		if err != nil {
			unknown(FigureDataChain, err)
			return
		}
		var s struct {
			Chunks    int64 `json:"chunks"`
			Sessions  int64 `json:"sessions"`
			PackBytes int64 `json:"pack_bytes"`
		}
		if err := c.getJSON(ctx, "/api/v1/status", true, &s); err != nil {
			unknown(FigureDataChain, err)
			return
		}
		mu.Lock()
		reports.DataChainBytes, reports.DataChainChunks, reports.DataChainSessions = &s.PackBytes, &s.Chunks, &s.Sessions
		mu.Unlock()
	})
	wg.Wait()

	// Every service's certificate, seen in a handshake with it.
	var why []string
	for i := range st.Services {
		s := &st.Services[i]
		// The gateway's own certificate is public, not the mesh's: its
		// expiry is in GatewayTLS.
		if svc, ok := catalog.Lookup(s.Service); !ok || s.State != "running" || svc.Public {
			continue
		}
		c, err := client(s.Service)
		if err != nil {
			why = append(why, s.Service+": "+err.Error())
			continue
		}
		if !c.tls {
			why = append(why, s.Service+": plain HTTP (the mesh is off)")
			continue
		}
		if err := c.handshake(ctx); err != nil {
			why = append(why, s.Service+": "+err.Error())
			continue
		}
		s.CertNotAfter = c.notAfter
		if reports.CertNotAfter.IsZero() || c.notAfter.Before(reports.CertNotAfter) {
			reports.CertNotAfter = c.notAfter
		}
	}
	if reports.CertNotAfter.IsZero() {
		if len(why) == 0 {
			why = append(why, "no service runs")
		}
		unknown(FigureCertificates, errors.New(strings.Join(why, "; ")))
	}
}

// meshBundle reads the mesh CA's bundle from the mesh controller's
// container.
func (d *Deployer) meshBundle(ctx context.Context, running map[string]container.Summary) (*x509.CertPool, error) {
	mesh, _ := catalog.Lookup(catalog.MeshService)
	c, ok := running[mesh.Container]
	if !ok {
		return nil, errors.New("no mesh controller container, so no mesh CA bundle to verify the services by")
	}
	rc, _, err := d.h.docker.CopyFromContainer(ctx, c.ID, meshBundlePath)
	if err != nil {
		return nil, fmt.Errorf("the mesh CA bundle %s: %w", meshBundlePath, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return nil, fmt.Errorf("the mesh CA bundle %s: %w", meshBundlePath, err)
	}
	pem, err := io.ReadAll(io.LimitReader(tr, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("the mesh CA bundle %s: %w", meshBundlePath, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("the mesh CA bundle %s holds no certificate", meshBundlePath)
	}
	return pool, nil
}

// ErrNotRunning is a service asked about whose container does not run.
var ErrNotRunning = errors.New("does not run")

// serviceClient talks to one service through the connection.
type serviceClient struct {
	name     string
	addr     string // on the host's loopback
	tls      bool
	token    string
	refused  *operatorRefusal
	hc       *http.Client
	tr       *http.Transport
	timeout  time.Duration
	notAfter time.Time
	err      error
}

func (c *serviceClient) close() {
	if c.tr != nil {
		c.tr.CloseIdleConnections()
	}
}

// serviceClient finds the service's published port and whether it speaks
// TLS, and returns a client for it (its err says why there is none).
// refused explains an operator request the service refuses.
func (d *Deployer) serviceClient(ctx context.Context, name string, running map[string]container.Summary, bundle *x509.CertPool, bundleErr error, o StatusOptions, refused *operatorRefusal) *serviceClient {
	svc, _ := catalog.Lookup(name)
	sc := &serviceClient{name: name, timeout: o.Timeout, refused: refused}
	if o.OperatorToken != "" {
		// The operator's credential for this service on this host alone:
		// neither another service nor this one on another host accepts it.
		sc.token = auth.OperatorCredential(o.OperatorToken, name, d.cfg.Name)
	}
	c, ok := running[svc.Container]
	if !ok || c.State != "running" {
		sc.err = fmt.Errorf("%s %w", name, ErrNotRunning)
		return sc
	}
	port := 0
	for _, p := range c.Ports {
		if int(p.PrivatePort) == svc.Port && p.PublicPort != 0 && p.Type == "tcp" {
			port = int(p.PublicPort)
		}
	}
	if port == 0 {
		sc.err = fmt.Errorf("%s publishes no port on the host", name)
		return sc
	}
	sc.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	dial := func(context.Context, string, string) (net.Conn, error) { return d.h.ssh.DialTCP(sc.addr) }

	// TLS when the service speaks it (the mesh is on): a plain HTTP
	// server answers a ClientHello with something that is no TLS record.
	conn, err := dial(ctx, "", "")
	if err != nil {
		sc.err = fmt.Errorf("%s at %s on the host: %w", name, sc.addr, err)
		return sc
	}
	hctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	probe := tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only to learn whether it speaks TLS; nothing is sent
	herr := probe.HandshakeContext(hctx)
	_ = probe.Close() // a probe
	var rh tls.RecordHeaderError
	switch {
	case herr == nil:
		sc.tls = true
	case errors.As(herr, &rh):
		sc.tls = false
	default:
		sc.err = fmt.Errorf("%s at %s on the host: %w", name, sc.addr, herr)
		return sc
	}
	sc.tr = &http.Transport{DialContext: dial}
	switch {
	case sc.tls && svc.Public:
		// The gateway's public certificate, reached on the host's loopback
		// through SSH, where its public name does not apply; only its
		// metrics are read, and no credential is sent to it.
		sc.tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // see above
	case sc.tls:
		if bundle == nil {
			sc.err = bundleErr
			return sc
		}
		sc.tr.TLSClientConfig = &tls.Config{
			// The name is checked below: the SPIFFE ID, not a host name.
			InsecureSkipVerify: true, //nolint:gosec // VerifyPeerCertificate checks the chain against the mesh CA and the service's identity
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				return sc.verify(raw, bundle)
			},
		}
	}
	sc.hc = &http.Client{Timeout: o.Timeout, Transport: sc.tr}
	return sc
}

// verify checks the server's chain against the bundle and that it is the
// service asked for, and keeps the leaf's expiry.
func (c *serviceClient) verify(raw [][]byte, roots *x509.CertPool) error {
	var certs []*x509.Certificate
	for _, r := range raw {
		cert, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return errors.New("the service presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, cert := range certs[1:] {
		inter.AddCert(cert)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("its certificate does not chain to the mesh CA: %w", err)
	}
	if name, ok := meshca.ServiceOf(certs[0]); !ok || name != c.name {
		return fmt.Errorf("its certificate is not %s's", c.name)
	}
	c.notAfter = certs[0].NotAfter.UTC()
	return nil
}

// handshake makes sure a TLS handshake happened (for the certificate's
// expiry), with a request only the anonymous may make.
func (c *serviceClient) handshake(ctx context.Context) error {
	if !c.notAfter.IsZero() {
		return nil
	}
	_, err := c.get(ctx, "/health", false)
	return err
}

// get asks the service for p, as the operator when asked and a token is
// at hand.
func (c *serviceClient) get(ctx context.Context, p string, operator bool) ([]byte, error) {
	if operator && c.token == "" {
		return nil, noOperatorToken{c.name}
	}
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+c.addr+p, nil)
	if err != nil {
		return nil, err
	}
	if operator {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // without the URL, which says nothing new
		}
		return nil, fmt.Errorf("%s %s: %w", c.name, p, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.name, p, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := resp.Status
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			msg += ": " + e.Error.Message
		}
		if operator && (resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized) {
			msg += " (" + c.refused.say(ctx) + ")"
		}
		return nil, &statusError{code: resp.StatusCode, msg: fmt.Sprintf("%s %s: %s", c.name, p, msg)}
	}
	return body, nil
}

// operatorRefusal says why the host's services refuse the operator's
// credentials, from what its current release holds of them, read once
// when a service first refuses.
type operatorRefusal struct {
	once  sync.Once
	read  func(context.Context) (string, *StaleCredentials)
	why   string
	stale *StaleCredentials
}

// operatorRefusal explains the refusals of the credentials derived from
// token.
func (d *Deployer) operatorRefusal(token string) *operatorRefusal {
	return &operatorRefusal{read: func(ctx context.Context) (string, *StaleCredentials) {
		const unknown = "is LUCID_OPERATOR_TOKEN the one deployed?"
		release, files, err := d.h.currentEnvFiles(ctx)
		if err != nil || release == "" {
			return unknown, nil
		}
		s, err := deployfiles.ReadDeployedSecrets(d.cfg.Name, files)
		if err != nil {
			return unknown, nil
		}
		h := s.OperatorHashesOf(token)
		why, hint := h.Refusal(d.cfg.Name)
		if why == "" {
			// The release holds this token's credentials for the host:
			// the containers run another (a deploy that did not finish).
			return unknown, nil
		}
		var stale *StaleCredentials
		if h.Stale() {
			stale = &StaleCredentials{Release: release}
			if vals, err := envfile.Parse(files[deployfiles.ServiceEnvPath("engine")]); err == nil {
				stale.EngineNode = vals["LUCID_NODE_ID"]
			}
		}
		return why + "; " + hint, stale
	}}
}

// say is why the services refuse the operator's credentials.
func (r *operatorRefusal) say(ctx context.Context) string {
	r.once.Do(func() { r.why, r.stale = r.read(ctx) })
	return r.why
}

// staleCredentials is the host's release when a service refused the
// credentials because it was rendered before per-host ones; nil
// otherwise. Called once the reads are done.
func (r *operatorRefusal) staleCredentials() *StaleCredentials {
	r.once.Do(func() {}) // orders it after a read made; none made, none refused
	return r.stale
}

// statusError is a service's answer other than 200.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// ErrCredentialsRefused is a host's service refusing the operator's
// credentials (401, 403), or there being none to send: the token is
// another than the host's, or the host runs a release from before the
// credentials it is asked with.
var ErrCredentialsRefused = errors.New("the operator's credentials were refused")

// Is makes a refusal of the operator's credentials ErrCredentialsRefused.
func (e *statusError) Is(target error) bool {
	return target == ErrCredentialsRefused && (e.code == http.StatusUnauthorized || e.code == http.StatusForbidden)
}

// noOperatorToken is a call the operator makes, without the token.
type noOperatorToken struct{ service string }

func (e noOperatorToken) Error() string {
	return "no operator token (LUCID_OPERATOR_TOKEN) to ask " + e.service + " with"
}

func (noOperatorToken) Is(target error) bool { return target == ErrCredentialsRefused }

func (c *serviceClient) getJSON(ctx context.Context, p string, operator bool, v any) error {
	body, err := c.get(ctx, p, operator)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s %s: %w", c.name, p, err)
	}
	return nil
}

// metric reads an unlabelled sample from the service's /metrics.
func (c *serviceClient) metric(ctx context.Context, name string) (float64, error) {
	m, err := c.metrics(ctx, name)
	if err != nil {
		return 0, err
	}
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("%s /metrics has no %s", c.name, name)
	}
	return v, nil
}

// metrics reads unlabelled samples from the service's /metrics: those of
// names it has.
func (c *serviceClient) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	body, err := c.get(ctx, "/metrics", false)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && slices.Contains(names, f[0]) {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m, nil
}

// oneLine keeps the first line of s.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	return s
}

// SortedUnknown is the figures of a HostStatus.Unknown in a stable order,
// for printing.
func SortedUnknown(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
