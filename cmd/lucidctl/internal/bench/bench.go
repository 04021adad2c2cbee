// Package bench implements `lucidctl bench`: the Phase 2 benchmarks,
// measured on a running stack and held to the targets of pkg/benchtarget
// and the goals of lucid.yaml, with a table, JSON or an HTML report.
package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/runningstack"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/benchtarget"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/loadgen"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/yamlkeys"
)

// Options are the inputs of `lucidctl bench`.
type Options struct {
	Env         *cli.Env
	Target      runningstack.Flags
	Scenarios   []string
	Duration    time.Duration
	Concurrency int
	Rate        float64
	Anchors     int
	Blocks      int
	Report      string
}

// Check compares one measured value with a target.
type Check struct {
	Metric string  `json:"metric"`
	Want   string  `json:"want"`
	Value  float64 `json:"value"`
	Pass   bool    `json:"pass"`
}

// ScenarioResult is one scenario's measurements.
type ScenarioResult struct {
	Name    string             `json:"name"`
	Metrics map[string]float64 `json:"metrics"`
	Checks  []Check            `json:"checks"`
	Skipped string             `json:"skipped,omitempty"`
	Error   string             `json:"error,omitempty"`
	// FirstErrors names, per load that had failed requests ("requests",
	// or a lookup kind), the first failure: a count alone says nothing
	// about why.
	FirstErrors map[string]string `json:"first_errors,omitempty"`
	// For the report's charts.
	perSecond []int64
	latencies []float64 // ms, a sample
	intervals []float64 // s
}

// Result is the whole run.
type Result struct {
	Target      string           `json:"target"`
	Started     time.Time        `json:"started"`
	Interrupted bool             `json:"interrupted"`
	Scenarios   []ScenarioResult `json:"scenarios"`
	Passed      bool             `json:"passed"`
}

// NewCmd returns `lucidctl bench`.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running stack against the Phase 2 targets",
		Long: `Drive load at a running stack (the local one by default, a gateway URL, or a
target of lucid.yaml) and measure:

  gateway-throughput    requests/s through the gateway with valid tokens (closed loop)
  gateway-latency       p50/p95/p99 at a fixed rate (open loop: queueing counts)
  block-interval        mean, jitter and worst drift of the real block times
  anchoring-throughput  anchors/s from submission until sealed, receipts verified offline
  query-latency         block, anchor and proof lookups at 50/s each (open loop): p95
  mesh-overhead         one request direct to a service over mTLS and through the gateway

Each is compared with the Phase 2 targets (` + phase2Summary() + `)
and with the goals in the bench section of lucid.yaml (` + strings.Join(benchtarget.GoalKeys(), ", ") + `).
A table goes to stdout (--json for a document), progress to stderr; --report
DIR writes an HTML report with charts, viewable offline. Ctrl-C stops the run
and still reports. Exit status 3 when a target is missed.`,
		Example: `  lucidctl bench
  lucidctl bench --duration 30s --report bench-report
  lucidctl bench --target http://raspberrypi.local:8080 --scenarios gateway-latency,block-interval`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), opts) },
	}
	f := cmd.Flags()
	opts.Target.Add(f)
	f.StringSliceVar(&opts.Scenarios, "scenarios", benchtarget.Scenarios, "scenarios to run")
	f.DurationVar(&opts.Duration, "duration", 10*time.Second, "how long each load scenario runs")
	f.IntVar(&opts.Concurrency, "concurrency", 32, "workers for the closed-loop scenarios")
	f.Float64Var(&opts.Rate, "rate", 100, "requests/s for the open-loop latency scenario")
	f.IntVar(&opts.Anchors, "anchors", 100, "anchors the anchoring scenario submits")
	f.IntVar(&opts.Blocks, "blocks", 20, "recent blocks the block-interval scenario reads")
	f.StringVar(&opts.Report, "report", "", "write an HTML report with charts into this directory")
	return cli.SupportsJSON(cmd)
}

// phase2Summary is the Phase 2 targets in a line of help.
func phase2Summary() string {
	return fmt.Sprintf("gateway %s, gateway p95 %s, a block per %g s, query p95 %s, mesh overhead %s",
		benchtarget.Phase2GatewayThroughput.Bound(), benchtarget.Phase2GatewayLatency.Bound(),
		benchtarget.Phase2BlockInterval.Seconds(), benchtarget.Phase2BlockLookup.Bound(), benchtarget.Phase2MeshOverhead.Bound())
}

// checkOptions refuses flag values no run can use.
func checkOptions(opts *Options) error {
	for _, s := range opts.Scenarios {
		if !slices.Contains(benchtarget.Scenarios, s) {
			msg := fmt.Sprintf("--scenarios: unknown scenario %q (one of: %s)", s, strings.Join(benchtarget.Scenarios, ", "))
			if c := yamlkeys.Closest(s, benchtarget.Scenarios); c != "" {
				msg = fmt.Sprintf("--scenarios: unknown scenario %q (did you mean %q?)", s, c)
			}
			return cli.Usage(errors.New(msg))
		}
	}
	switch {
	case opts.Duration < time.Second || opts.Duration > time.Hour:
		return cli.Usage(fmt.Errorf("--duration %s: 1s to 1h", opts.Duration))
	case opts.Concurrency < 1:
		return cli.Usage(fmt.Errorf("--concurrency %d: at least 1", opts.Concurrency))
	case opts.Rate <= 0:
		return cli.Usage(fmt.Errorf("--rate %g: more than 0", opts.Rate))
	case opts.Anchors < 1:
		return cli.Usage(fmt.Errorf("--anchors %d: at least 1", opts.Anchors))
	case opts.Blocks < 2:
		return cli.Usage(fmt.Errorf("--blocks %d: at least 2 (intervals lie between blocks)", opts.Blocks))
	}
	return nil
}

func run(ctx context.Context, opts *Options) error {
	if err := checkOptions(opts); err != nil {
		return err
	}
	e, err := opts.Target.Resolve(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer e.Close()
	res := &Result{Target: e.Gateway, Started: time.Now().UTC(), Passed: true}
	progress := func(format string, args ...any) {
		_, _ = fmt.Fprintf(opts.Env.IO.ErrOut, format+"\n", args...)
	}
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	b := &bench{opts: opts, e: e, progress: progress, goals: cfg.Bench}
	for _, name := range benchtarget.Scenarios {
		if !slices.Contains(opts.Scenarios, name) {
			continue
		}
		if ctx.Err() != nil {
			res.Interrupted = true
			break
		}
		progress("%s ...", name)
		r := b.run(ctx, name)
		if ctx.Err() != nil {
			res.Interrupted = true
		}
		for _, c := range r.Checks {
			res.Passed = res.Passed && c.Pass
		}
		res.Scenarios = append(res.Scenarios, r)
	}
	if opts.Report != "" {
		if err := writeReport(opts.Report, res); err != nil {
			return err
		}
		progress("report written to %s", opts.Report)
	}
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(res); err != nil {
			return err
		}
	} else if err := printTable(opts.Env, res); err != nil {
		return err
	}
	if !res.Passed {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}

type bench struct {
	opts     *Options
	goals    projectconfig.BenchGoals
	e        *runningstack.Endpoints
	progress func(string, ...any)
	// anchored are sessions the anchoring scenario sealed, with their
	// transactions, for the query scenario, and owner the token of the
	// user they belong to: only that user's lookups find them.
	anchored []anchoredSession
	owner    string
}

type anchoredSession struct{ session, tx string }

func (b *bench) run(ctx context.Context, name string) ScenarioResult {
	r := ScenarioResult{Name: name, Metrics: map[string]float64{}, Checks: []Check{}}
	var err error
	switch name {
	case benchtarget.GatewayThroughput:
		err = b.throughput(ctx, &r)
	case benchtarget.GatewayLatency:
		err = b.latency(ctx, &r)
	case benchtarget.BlockInterval:
		err = b.blockInterval(ctx, &r)
	case benchtarget.AnchoringThroughput:
		err = b.anchoring(ctx, &r)
	case benchtarget.QueryLatency:
		err = b.queries(ctx, &r)
	case benchtarget.MeshOverhead:
		err = b.meshOverhead(ctx, &r)
	}
	if err != nil {
		r.Error = err.Error()
		r.Checks = append(r.Checks, Check{Metric: "ran", Want: "without error", Pass: false})
	}
	b.goalChecks(&r)
	return r
}

// goalChecks adds lucid.yaml's own goals (bench:) beside the Phase 2
// targets.
func (b *bench) goalChecks(r *ScenarioResult) {
	for _, g := range benchtarget.Goals {
		threshold := b.goals[g.Key]
		if threshold == 0 {
			continue
		}
		for _, m := range g.Metrics {
			if m.Scenario != r.Name {
				continue
			}
			if v, ok := r.Metrics[m.Name]; ok {
				r.addTarget(g.Target(m, threshold), v, true)
			}
		}
	}
}

// addTarget checks value against t; also says what else must hold for
// the value to count (no failed requests, say).
func (s *ScenarioResult) addTarget(t benchtarget.Target, value float64, also bool) {
	s.Checks = append(s.Checks, Check{Metric: t.Name, Want: t.Want(), Value: value, Pass: also && t.Met(value)})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// tokenPool is enough enterprise tokens, used in turn, that their
// rate-limit budgets together (each 10,000/min) exceed what one machine can
// send: the benchmark measures the gateway, not its limits.
const tokenPool = 1024

// tokens signs a fresh pool for a scenario (1,024 tokens take a few
// milliseconds), so none expires during it, however many came before.
func (b *bench) tokens() ([]string, error) {
	run := uuid.NewString()[:8]
	out := make([]string, tokenPool)
	for i := range out {
		t, err := b.e.Token(fmt.Sprintf("bench-%s-%d", run, i), auth.TierEnterprise)
		if err != nil {
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}

func (b *bench) getter(url string, tokens []string) func(context.Context, int) error {
	client := b.e.Client(10 * time.Second)
	var next atomic.Uint64
	return func(ctx context.Context, _ int) error {
		tok := tokens[next.Add(1)%uint64(len(tokens))]
		return api.Do(ctx, client, api.Request{Method: http.MethodGet, URL: url, Token: tok}, nil)
	}
}

func (s *ScenarioResult) noteFirstError(load string, r loadgen.Result) {
	if r.FirstError == "" {
		return
	}
	if s.FirstErrors == nil {
		s.FirstErrors = map[string]string{}
	}
	s.FirstErrors[load] = r.FirstError
}

func (b *bench) report(r loadgen.Result, s *ScenarioResult) {
	s.Metrics["requests"] = float64(r.Requests)
	s.Metrics["errors"] = float64(r.Errors)
	s.noteFirstError("requests", r)
	s.Metrics["requests_per_second"] = math.Round(r.Throughput*10) / 10
	s.Metrics["p50_ms"], s.Metrics["p95_ms"], s.Metrics["p99_ms"], s.Metrics["max_ms"] = ms(r.P50), ms(r.P95), ms(r.P99), ms(r.Max)
	s.perSecond = r.PerSecond
	// A sample of about 2,000 latencies, each bucket in proportion to its
	// count, for the report's histogram.
	total := r.Histogram.TotalCount()
	for _, bar := range r.Histogram.Distribution() {
		if bar.Count == 0 || total == 0 {
			continue
		}
		n := max(1, bar.Count*2000/total)
		for range n {
			s.latencies = append(s.latencies, float64(bar.From)/1000)
		}
	}
}

func (b *bench) throughput(ctx context.Context, s *ScenarioResult) error {
	toks, err := b.tokens()
	if err != nil {
		return err
	}
	r := loadgen.Run(ctx, loadgen.Options{Do: b.getter(b.e.Gateway+"/api/v1/chain/status", toks), Concurrency: b.opts.Concurrency, Duration: b.opts.Duration,
		Progress: func(p loadgen.Snapshot) {
			b.progress("  %s  %d requests, %d errors", p.Elapsed.Round(time.Second), p.Requests, p.Errors)
		}})
	b.report(r, s)
	s.addTarget(benchtarget.Phase2GatewayThroughput, s.Metrics[benchtarget.Phase2GatewayThroughput.Name], true)
	s.Checks = append(s.Checks, Check{Metric: "errors", Want: "0", Value: float64(r.Errors), Pass: r.Errors == 0},
		Check{Metric: "requests", Want: "> 0", Value: float64(r.Requests), Pass: r.Requests > 0})
	return nil
}

func (b *bench) latency(ctx context.Context, s *ScenarioResult) error {
	toks, err := b.tokens()
	if err != nil {
		return err
	}
	r := loadgen.Run(ctx, loadgen.Options{Do: b.getter(b.e.Gateway+"/api/v1/chain/status", toks), Concurrency: 64, Rate: b.opts.Rate, Duration: b.opts.Duration})
	b.report(r, s)
	// Open loop: every due request counts, so a stall shows as latency or
	// failures; a run must also have completed about rate × duration.
	enough := 0.9 * b.opts.Rate * r.Elapsed.Seconds()
	s.addTarget(benchtarget.Phase2GatewayLatency, s.Metrics[benchtarget.Phase2GatewayLatency.Name], r.Requests > 0)
	s.Checks = append(s.Checks, Check{Metric: "errors", Want: "0", Value: float64(r.Errors), Pass: r.Errors == 0},
		Check{Metric: "requests", Want: fmt.Sprintf(">= %.0f (90 %% of rate × duration)", enough), Value: float64(r.Requests), Pass: float64(r.Requests) >= enough})
	return nil
}

// blockInterval reads the real block times: the Phase 2 document asserted
// a hard-coded one.
func (b *bench) blockInterval(ctx context.Context, s *ScenarioResult) error {
	tok, err := b.e.Token("bench-blocks", auth.TierEnterprise)
	if err != nil {
		return err
	}
	info, err := engineapi.New(b.e.Gateway+"/blockchain", &http.Client{Timeout: 10 * time.Second, Transport: api.WithBearer(b.e.Transport(false), tok)}).Chain(ctx)
	if err != nil {
		return fmt.Errorf("chain info: %w", err)
	}
	want := benchtarget.Phase2BlockInterval.Seconds()
	if d, err := time.ParseDuration(info.BlockInterval); err == nil && d > 0 {
		want = d.Seconds()
	}
	var page struct {
		Blocks []struct {
			Height uint64    `json:"height"`
			Time   time.Time `json:"time"`
		} `json:"blocks"`
	}
	url := fmt.Sprintf("%s/api/v1/blocks?limit=%d", b.e.Gateway, min(b.opts.Blocks+1, 100))
	if err := api.Do(ctx, b.e.Client(10*time.Second), api.Request{Method: http.MethodGet, URL: url, Token: tok}, &page); err != nil {
		return err
	}
	if len(page.Blocks) < 3 {
		return fmt.Errorf("only %d blocks so far; let the chain run a little", len(page.Blocks))
	}
	var iv []float64
	for i := 0; i+1 < len(page.Blocks); i++ { // newest first
		iv = append(iv, page.Blocks[i].Time.Sub(page.Blocks[i+1].Time).Seconds())
	}
	slices.Reverse(iv)
	mean, sd, drift := 0.0, 0.0, 0.0
	for _, v := range iv {
		mean += v
	}
	mean /= float64(len(iv))
	for _, v := range iv {
		sd += (v - mean) * (v - mean)
		drift = max(drift, math.Abs(v-want))
	}
	sd = math.Sqrt(sd / float64(len(iv)))
	s.Metrics["blocks"] = float64(len(iv))
	s.Metrics["mean_interval_s"] = math.Round(mean*1000) / 1000
	s.Metrics["jitter_s"] = math.Round(sd*1000) / 1000
	s.Metrics["max_drift_s"] = math.Round(drift*1000) / 1000
	s.intervals = iv
	s.Metrics["configured_interval_s"] = want
	age := time.Since(page.Blocks[0].Time).Seconds()
	s.Metrics["newest_block_age_s"] = math.Round(age*10) / 10
	maxAge := 2*want + 1 // seconds, and fractional: < is not <= 2*want
	s.Checks = append(s.Checks,
		Check{Metric: "newest_block_age_s", Want: fmt.Sprintf("< %g (the chain is producing)", maxAge), Value: s.Metrics["newest_block_age_s"], Pass: age < maxAge},
		Check{Metric: "max_drift_s", Want: fmt.Sprintf("< %g (half an interval)", want/2), Value: s.Metrics["max_drift_s"], Pass: drift < want/2})
	s.Checks = append(s.Checks, Check{Metric: "mean_interval_s", Want: benchtarget.BlockIntervalWant(want), Value: s.Metrics["mean_interval_s"], Pass: benchtarget.BlockIntervalMet(mean, want)})
	return nil
}

// anchoring submits anchors through the gateway, waits until every one is
// sealed, and verifies each receipt offline against the chain's key.
func (b *bench) anchoring(ctx context.Context, s *ScenarioResult) error {
	tok, err := b.e.Token("bench-anchoring-"+uuid.NewString()[:8], auth.TierEnterprise)
	if err != nil {
		return err
	}
	probe, err := runningstack.NewAnchorProbe(ctx, b.e, tok, 30*time.Second)
	if err != nil {
		return err
	}
	b.owner = tok
	start := time.Now()
	sessions := make([]*chain.SessionAnchor, b.opts.Anchors)
	var wg sync.WaitGroup
	var submitErr atomic.Value
	sem := make(chan struct{}, 16)
	for i := range sessions {
		sessions[i] = runningstack.TestAnchor(uuid.NewString())
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := probe.Submit(ctx, sessions[i]); err != nil {
				submitErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if v := submitErr.Load(); v != nil {
		return fmt.Errorf("submit: %w", v.(error))
	}
	submitted := time.Since(start)
	b.progress("  %d anchors submitted in %s; waiting until sealed", len(sessions), submitted.Round(time.Millisecond))
	verified := 0
	if err := probe.WaitSealed(ctx, sessions, 2*time.Minute, func(m *chain.SessionAnchor, st *anchoringapi.AnchorStatus) {
		verified++
		b.anchored = append(b.anchored, anchoredSession{session: m.SessionID, tx: st.TxID})
	}); err != nil {
		return err
	}
	all := time.Since(start)
	s.Metrics["anchors"] = float64(len(sessions))
	s.Metrics["submit_per_second"] = math.Round(float64(len(sessions))/submitted.Seconds()*10) / 10
	s.Metrics["sealed_per_second"] = math.Round(float64(len(sessions))/all.Seconds()*100) / 100
	s.Metrics["seconds_to_all_sealed"] = math.Round(all.Seconds()*100) / 100
	s.Metrics["receipts_verified"] = float64(verified)
	s.Checks = append(s.Checks, Check{Metric: "receipts_verified", Want: fmt.Sprint(len(sessions)), Value: float64(verified), Pass: verified == len(sessions)})
	return nil
}

// queries times block, anchor and proof lookups through the gateway.
func (b *bench) queries(ctx context.Context, s *ScenarioResult) error {
	toks, err := b.tokens()
	if err != nil {
		return err
	}
	client := b.e.Client(10 * time.Second)
	type kind struct {
		name   string
		target benchtarget.Target
		url    func(i int) string
		// token is the one token to send (an anchor is its owner's to
		// look up); empty: one of toks.
		token string
	}
	kinds := []kind{{name: "block", target: benchtarget.Phase2BlockLookup, url: func(i int) string { return fmt.Sprintf("%s/api/v1/blocks/%d", b.e.Gateway, 1+i%3) }}}
	if len(b.anchored) > 0 {
		kinds = append(kinds,
			kind{name: "anchor", target: benchtarget.Phase2AnchorLookup, token: b.owner, url: func(i int) string { return b.e.Gateway + "/api/v1/anchors/" + b.anchored[i%len(b.anchored)].session }},
			kind{name: "proof", target: benchtarget.Phase2ProofLookup, url: func(i int) string { return b.e.Gateway + "/api/v1/chain/proofs/" + b.anchored[i%len(b.anchored)].tx }})
	} else {
		s.Skipped = "anchor and proof lookups need the anchoring scenario"
	}
	worst := time.Duration(0)
	for _, k := range kinds {
		var n atomic.Int64
		// Open loop: a closed loop would wait out a stalled server and
		// record one slow request where many were held up.
		r := loadgen.Run(ctx, loadgen.Options{Concurrency: 16, Rate: 50, Duration: max(b.opts.Duration/3, time.Second), Do: func(ctx context.Context, _ int) error {
			i := int(n.Add(1))
			tok := k.token
			if tok == "" {
				tok = toks[i%len(toks)]
			}
			return api.Do(ctx, client, api.Request{Method: http.MethodGet, URL: k.url(i), Token: tok}, nil)
		}})
		s.Metrics[k.target.Name] = ms(r.P95)
		s.Metrics[k.name+"_errors"] = float64(r.Errors)
		s.noteFirstError(k.name, r)
		worst = max(worst, r.P95)
		s.addTarget(k.target, ms(r.P95), r.Errors == 0)
	}
	return nil
}

// meshOverhead compares one request direct to the block manager over mTLS
// with the same request through the gateway.
func (b *bench) meshOverhead(ctx context.Context, s *ScenarioResult) error {
	direct := b.e.Service["blocks"]
	if direct == "" {
		s.Skipped = "needs the local stack (internal ports are not reachable through a URL)"
		return nil
	}
	mc, err := b.e.MeshClient(ctx)
	if err != nil {
		s.Skipped = "no mesh identity: " + err.Error()
		return nil
	}
	toks, err := b.tokens()
	if err != nil {
		return err
	}
	d := max(b.opts.Duration/2, time.Second)
	rd := loadgen.Run(ctx, loadgen.Options{Concurrency: 1, Duration: d, Do: func(ctx context.Context, _ int) error {
		return api.Do(ctx, mc, api.Request{Method: http.MethodGet, URL: direct + "/api/v1/chain/status"}, nil)
	}})
	rg := loadgen.Run(ctx, loadgen.Options{Concurrency: 1, Duration: d, Do: b.getter(b.e.Gateway+"/api/v1/chain/status", toks)})
	over := rg.P50 - rd.P50
	s.Metrics["direct_mtls_p50_ms"] = ms(rd.P50)
	s.Metrics["gateway_p50_ms"] = ms(rg.P50)
	s.Metrics[benchtarget.Phase2MeshOverhead.Name] = ms(over)
	s.addTarget(benchtarget.Phase2MeshOverhead, ms(over), rd.Errors == 0 && rg.Errors == 0 && rd.Requests > 0 && rg.Requests > 0)
	return nil
}

func printTable(env *cli.Env, res *Result) error {
	tw := tabwriter.NewWriter(env.IO.Out, 0, 4, 2, ' ', 0)
	// The tabwriter holds the table until Flush, whose error is returned.
	row := func(format string, args ...any) { _, _ = fmt.Fprintf(tw, format, args...) }
	row("SCENARIO\tMETRIC\tVALUE\tTARGET\tRESULT\n")
	for _, s := range res.Scenarios {
		keys := make([]string, 0, len(s.Metrics))
		for k := range s.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			printed := false
			for _, c := range s.Checks {
				if c.Metric == k {
					row("%s\t%s\t%g\t%s\t%s\n", s.Name, k, s.Metrics[k], c.Want, map[bool]string{true: "ok", false: "MISSED"}[c.Pass])
					printed = true
				}
			}
			if !printed {
				row("%s\t%s\t%g\t\t\n", s.Name, k, s.Metrics[k])
			}
		}
		if s.Skipped != "" {
			row("%s\t(skipped)\t\t\t%s\n", s.Name, s.Skipped)
		}
		if s.Error != "" {
			row("%s\t(error)\t\t\t%s\n", s.Name, s.Error)
		}
		for _, load := range slices.Sorted(maps.Keys(s.FirstErrors)) {
			row("%s\t(first failure: %s)\t\t\t%s\n", s.Name, load, s.FirstErrors[load])
		}
	}
	if res.Interrupted {
		_, _ = fmt.Fprintln(env.IO.ErrOut, "interrupted: the results cover what ran")
	}
	return tw.Flush()
}
