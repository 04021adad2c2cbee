// Package observe is `lucidctl status --target` and `lucidctl logs
// --target`: what the deployed hosts run, how they are, and what their
// services are saying, read over SSH through each host's Docker Engine
// (pkg/deploy) and printed here. Without --target the same commands show
// the local stack (package stack), which calls in here when one is given.
package observe

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/deploy"
)

// StatusOptions are the inputs of `lucidctl status --target`.
type StatusOptions struct {
	Env   *cli.Env
	Fleet *fleet.Flags
	// Now is the clock of relative times (default time.Now).
	Now func() time.Time
}

// StatusDoc is `status --target --json`: one document for every host.
type StatusDoc struct {
	Hosts []HostDoc `json:"hosts"`
	// Cluster is the verdict on the Raft cluster the hosts' engines form;
	// absent when they form none (a single host, or hosts each with its
	// own one-voter chain).
	Cluster *deploy.Cluster `json:"cluster,omitempty"`
	// Healthy is true when every host was reached and is healthy, and the
	// cluster, if any, is healthy: this decides the exit status.
	Healthy bool `json:"healthy"`
}

// HostDoc is one host: its status, or why there is none.
type HostDoc struct {
	Target string `json:"target"`
	// Reachable is false for a host skipped with --skip-unreachable.
	Reachable bool `json:"reachable"`
	// Error says why the host has no status (unreachable, or its Docker
	// Engine did not answer).
	Error string `json:"error,omitempty"`
	*deploy.HostStatus
}

// RunStatus reads every selected host in parallel and prints them; exit 3
// when a host is unhealthy or was skipped as unreachable.
func RunStatus(ctx context.Context, opts *StatusOptions) error {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	env := opts.Env
	fl, err := opts.Fleet.Connect(ctx, env)
	if err != nil {
		return err
	}
	defer fl.Close()
	token := env.OperatorToken("figures that need the operator token will be unknown")

	configs := make([]deploy.Config, len(fl.Hosts))
	for i, h := range fl.Hosts {
		configs[i] = h.DeployConfig()
	}
	sts, errs := deploy.StatusOf(ctx, configs, deploy.StatusOptions{OperatorToken: token})
	docs := make([]HostDoc, len(fl.Hosts))
	for i, h := range fl.Hosts {
		docs[i] = HostDoc{Target: h.Name, Reachable: true, HostStatus: sts[i]}
		if errs[i] != nil {
			docs[i].Error = errs[i].Error()
		}
	}
	for _, u := range fl.Unreachable {
		docs = append(docs, HostDoc{Target: u.Name, Error: u.Err.Error()})
	}
	doc := newStatusDoc(docs)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if env.JSON {
		if err := env.PrintJSON(doc); err != nil {
			return err
		}
	} else {
		printStatus(env.IO.Out, env.IO.OutStyles(), doc, opts.Now())
		if s := fl.SkippedSummary(); s != "" {
			fmt.Fprintln(env.IO.ErrOut, s)
		}
	}
	if !doc.Healthy {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}

// newStatusDoc completes the hosts read: each engine's commit lag behind
// the leader read among them, the cluster's verdict, and whether all is
// healthy, which alone decides the exit status.
func newStatusDoc(hosts []HostDoc) StatusDoc {
	var read []*deploy.HostStatus
	for _, h := range hosts {
		if h.HostStatus != nil {
			read = append(read, h.HostStatus)
		}
	}
	deploy.SetCommitLag(read)
	doc := StatusDoc{Hosts: hosts, Cluster: deploy.ClusterOf(read), Healthy: true}
	for _, h := range hosts {
		if h.HostStatus == nil || !h.Healthy {
			doc.Healthy = false
		}
	}
	if doc.Cluster != nil && !doc.Cluster.Healthy {
		doc.Healthy = false
	}
	return doc
}

// printStatus writes each host's block, then the cluster's verdict when
// the hosts form one.
func printStatus(w io.Writer, st *iostreams.Styles, doc StatusDoc, now time.Time) {
	// Every string here came from a host, which may be a hostile one.
	iostreams.SafeStrings(&doc)
	for i, h := range doc.Hosts {
		if i > 0 {
			fmt.Fprintln(w)
		}
		printHost(w, st, h, now)
	}
	if doc.Cluster != nil {
		fmt.Fprintln(w)
		printCluster(w, st, doc.Cluster)
	}
}

// printCluster writes the Raft cluster's verdict: its voters, quorum,
// leader and newest block, and an error line for each sign of a split.
func printCluster(w io.Writer, st *iostreams.Styles, c *deploy.Cluster) {
	verdict := st.Success.Render("healthy")
	if !c.Healthy {
		verdict = st.Error.Render("UNHEALTHY")
	}
	fmt.Fprintf(w, "%s  %s  %d voters, term %d\n", st.Bold.Render("raft cluster"), verdict, len(c.Voters), c.Term)
	var voters []string
	for _, v := range c.Voters {
		s := v.ID
		if v.Target != "" {
			s += " on " + v.Target
		}
		switch {
		case v.Healthy:
			s += " (" + v.State + ")"
		case v.Target == "":
			s += " (not read)"
		default:
			s += " (" + st.Error.Render("not healthy") + ": " + v.Why + ")"
		}
		voters = append(voters, s)
	}
	fmt.Fprintln(w, "voters:     "+strings.Join(voters, ", "))
	quorum := st.Success.Render("yes")
	switch {
	case c.QuorumLost:
		quorum = st.Error.Render("NO")
	case !c.Quorum:
		quorum = st.Warning.Render("unknown")
	}
	fmt.Fprintf(w, "quorum:     %s, %d of %d voters healthy, %d needed", quorum, c.HealthyVoters, len(c.Voters), c.QuorumNeeded)
	if c.UnreadVoters > 0 && !c.Quorum && !c.QuorumLost {
		fmt.Fprintf(w, "; %d not read (select every host of the cluster to judge it)", c.UnreadVoters)
	}
	fmt.Fprintln(w)
	switch {
	case c.Leader == nil:
		fmt.Fprintln(w, "leader:     "+st.Error.Render("NONE")+" (no engine leads or names a leader in the cluster's term)")
	case c.Leader.Target == "":
		fmt.Fprintf(w, "leader:     %s (named by the others; no host read answered as it)\n", c.Leader.ID)
	default:
		fmt.Fprintf(w, "leader:     %s on %s\n", c.Leader.ID, c.Leader.Target)
	}
	if c.NewestBlockAgeSec != nil {
		fmt.Fprintf(w, "chain:      newest block %s ago (on %s)\n", duration(time.Duration(*c.NewestBlockAgeSec*float64(time.Second))), c.NewestBlockTarget)
	} else {
		fmt.Fprintln(w, "chain:      newest block unknown (no host of the cluster could say)")
	}
	for _, e := range c.Errors {
		fmt.Fprintln(w, st.Error.Render("error:")+"      "+e)
	}
}

// printHost writes one host: a heading with its release, the containers,
// then the host's figures and the services' reports, one line each.
func printHost(w io.Writer, st *iostreams.Styles, h HostDoc, now time.Time) {
	if h.HostStatus == nil {
		what := "unreachable"
		if h.Reachable {
			what = "no status"
		}
		fmt.Fprintf(w, "%s  %s (%s)\n", st.Bold.Render(h.Target), st.Error.Render(what), h.Error)
		return
	}
	s := h.HostStatus
	verdict := st.Success.Render("healthy")
	if !s.Healthy {
		verdict = st.Error.Render("UNHEALTHY")
	}
	release := "no current release"
	switch {
	case s.Release != nil:
		r := s.Release
		release = fmt.Sprintf("release %s (version %s), deployed %s by %s", r.ID, r.Version, when(r.Created, now), r.By)
	case s.Unknown[deploy.FigureRelease] != "":
		release = "release unknown (" + s.Unknown[deploy.FigureRelease] + ")"
	}
	fmt.Fprintf(w, "%s  %s  %s\n", st.Bold.Render(h.Target), verdict, release)

	rows := [][]string{{"SERVICE", "STATE", "HEALTH", "RESTARTS", "UPTIME", "IMAGE", "CERT EXPIRES"}}
	for _, c := range s.Services {
		uptime, cert := "-", "-"
		if c.State == "running" && !c.StartedAt.IsZero() {
			uptime = duration(time.Duration(c.UptimeSeconds) * time.Second)
		}
		if !c.CertNotAfter.IsZero() {
			cert = "in " + duration(c.CertNotAfter.Sub(now))
		}
		rows = append(rows, []string{c.Service, c.State, c.Health, fmt.Sprint(c.Restarts), uptime, shortID(c.ImageID), cert})
	}
	st.Table(w, rows, func(col int, cell string) lipgloss.Style {
		switch {
		case col == 1 && cell != "running", col == 2 && cell == "unhealthy":
			return st.Error
		case col == 2 && cell == "starting":
			return st.Warning
		case col == 1, col == 2 && cell == "healthy":
			return st.Success
		}
		return lipgloss.NewStyle()
	})

	u := func(fig string) string { return "unknown (" + s.Unknown[fig] + ")" }
	known := func(fig string) bool { _, ok := s.Unknown[fig]; return !ok }
	var host []string
	if known(deploy.FigureDocker) {
		host = append(host, "docker "+s.Host.Docker)
	} else {
		host = append(host, "docker "+u(deploy.FigureDocker))
	}
	if d := s.Host.Disk; d != nil {
		used := 0.0
		if d.TotalBytes > 0 {
			used = 100 * float64(d.TotalBytes-d.FreeBytes) / float64(d.TotalBytes)
		}
		host = append(host, fmt.Sprintf("disk %s free of %s on %s (%.0f%% used)", iostreams.Bytes(d.FreeBytes), iostreams.Bytes(d.TotalBytes), d.Path, used))
	} else {
		host = append(host, "disk "+u(deploy.FigureDisk))
	}
	if m := s.Host.Memory; m != nil {
		host = append(host, fmt.Sprintf("memory %s available of %s", iostreams.Bytes(m.AvailableBytes), iostreams.Bytes(m.TotalBytes)))
	} else {
		host = append(host, "memory "+u(deploy.FigureMemory))
	}
	if l := s.Host.Load; len(l) == 3 {
		host = append(host, fmt.Sprintf("load %.2f %.2f %.2f", l[0], l[1], l[2]))
	} else {
		host = append(host, "load "+u(deploy.FigureLoad))
	}
	if c := s.Host.ClockSkewSeconds; c != nil {
		host = append(host, fmt.Sprintf("clock %+.1fs", *c))
	} else {
		host = append(host, "clock "+u(deploy.FigureClock))
	}
	fmt.Fprintln(w, "host:       "+strings.Join(host, ", "))
	// A held lock is a command running there now (or one that died and
	// whose lock has yet to expire); a free one is not worth a line.
	switch l := s.DeployLock; {
	case l != nil:
		fmt.Fprintf(w, "lock:       %s by %s (a deploy, rollback, restart, stop, prune or restore runs there; unless renewed it expires %s)\n",
			st.Warning.Render("HELD"), l, l.Expires.Local().Format("2006-01-02 15:04"))
	case !known(deploy.FigureDeployLock):
		fmt.Fprintln(w, "lock:       "+u(deploy.FigureDeployLock))
	}

	r := s.Reports
	var chain []string
	if r.ChainHeight != nil {
		chain = append(chain, fmt.Sprintf("height %d", *r.ChainHeight))
	} else {
		chain = append(chain, "height "+u(deploy.FigureChainHeight))
	}
	if r.NewestBlockAgeSec != nil {
		chain = append(chain, fmt.Sprintf("newest block %s ago", duration(time.Duration(*r.NewestBlockAgeSec*float64(time.Second)))))
	} else {
		chain = append(chain, "newest block "+u(deploy.FigureNewestBlock))
	}
	if r.RaftRole != "" {
		chain = append(chain, "raft "+r.RaftRole)
		if r.RaftTerm != nil && r.RaftAppliedIndex != nil {
			chain = append(chain, fmt.Sprintf("term %d", *r.RaftTerm), fmt.Sprintf("applied %d", *r.RaftAppliedIndex))
		}
		if r.RaftCommitLag != nil {
			chain = append(chain, fmt.Sprintf("lag %d", *r.RaftCommitLag))
		} else {
			chain = append(chain, "lag "+u(deploy.FigureCommitLag))
		}
	} else {
		chain = append(chain, "raft "+u(deploy.FigureRaftRole))
	}
	fmt.Fprintln(w, "chain:      "+strings.Join(chain, ", "))
	printFence(w, st, r.Fence)
	if why, ok := s.Unknown[deploy.FigureFence]; ok && r.Fence == nil {
		fmt.Fprintln(w, "fence:      unknown ("+why+")")
	}

	anchors := "queue " + u(deploy.FigureAnchorQueue)
	if r.AnchorQueue != nil {
		anchors = fmt.Sprintf("queue %d", *r.AnchorQueue)
	}
	anchors += ", oldest pending "
	switch {
	case !known(deploy.FigureOldestAnchor):
		anchors += u(deploy.FigureOldestAnchor)
	case r.OldestPendingAnchor.IsZero():
		anchors += "none"
	default:
		anchors += "accepted " + duration(now.Sub(r.OldestPendingAnchor)) + " ago"
	}
	fmt.Fprintln(w, "anchoring:  "+anchors)

	data := u(deploy.FigureDataChain)
	if r.DataChainBytes != nil {
		data = fmt.Sprintf("%s in %d chunks, %d sessions", iostreams.Bytes(*r.DataChainBytes), deref(r.DataChainChunks), deref(r.DataChainSessions))
	}
	fmt.Fprintln(w, "data chain: "+data)

	certs := u(deploy.FigureCertificates)
	if !r.CertNotAfter.IsZero() {
		certs = fmt.Sprintf("the first expires %s (in %s)", r.CertNotAfter.Format(time.RFC3339), duration(r.CertNotAfter.Sub(now)))
	}
	fmt.Fprintln(w, "mesh certs: "+certs)
	if _, ok := s.Unknown[deploy.FigureGatewayTLS]; ok {
		fmt.Fprintln(w, "gateway tls: "+u(deploy.FigureGatewayTLS))
	} else {
		PrintGatewayTLS(w, st, r.GatewayTLS)
	}
	for _, p := range s.Problems {
		fmt.Fprintln(w, st.Error.Render("problem:")+"    "+p)
	}
}

// PrintGatewayTLS writes the gateway's public certificates: each one's
// expiry and days left, with a warning under deploy.GatewayCertWarnDays;
// or that it serves plain HTTP.
func PrintGatewayTLS(w io.Writer, st *iostreams.Styles, g *deploy.GatewayTLS) {
	if g == nil {
		fmt.Fprintln(w, "gateway tls: none (plain HTTP)")
		return
	}
	for _, c := range g.Certificates {
		line := fmt.Sprintf("%s expires %s (%s)", orDash(c.Name), c.NotAfter.Format(time.RFC3339), daysLeft(c.DaysLeft))
		if c.DaysLeft < deploy.GatewayCertWarnDays {
			line = st.Warning.Render("warning: "+line) + "; renew it (ACME renews by itself: its log says why it has not)"
		}
		fmt.Fprintln(w, "gateway tls: "+line)
	}
}

// daysLeft says a certificate's days left in words.
func daysLeft(n int) string {
	switch {
	case n < 0:
		return "EXPIRED"
	case n == 1:
		return "1 day left"
	}
	return fmt.Sprintf("%d days left", n)
}

// printFence writes the engine's restore fence and the forks accepted
// when lifting one, if any.
func printFence(w io.Writer, st *iostreams.Styles, f *engineapi.FenceStatus) {
	if f == nil {
		return
	}
	if f.Fenced {
		line := "FENCED after a restore: producing no block"
		if f.Fence != nil {
			line += fmt.Sprintf(" (backup %s restored at height %d", orDash(f.Fence.Backup), f.Fence.RestoredHeight)
			line += fmt.Sprintf("; holds %d, can re-propose to %d)", f.Height, f.GuardedHeight)
		}
		fmt.Fprintln(w, "fence:      "+st.Error.Render(line)+"; see `lucidctl maintenance fence status`")
	}
	for _, k := range f.Forks {
		by := ""
		if k.By != "" {
			by = " by " + k.By
		}
		fmt.Fprintln(w, "fork:       "+st.Warning.Render(fmt.Sprintf("heights %d..%d void: a fork accepted %s%s", k.From, k.To, k.At.Format(time.RFC3339), by)))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// shortID is an image ID's first 12 hex digits, as docker shows it.
func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	if id == "" {
		return "-"
	}
	return id
}

// duration is d at a glance: 42s, 17m, 5h3m, 3d4h.
func duration(d time.Duration) string {
	if d < 0 {
		return "-" + duration(-d)
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// when is t and how long ago.
func when(t, now time.Time) string {
	return fmt.Sprintf("%s (%s ago)", t.Local().Format("2006-01-02 15:04"), duration(now.Sub(t)))
}
