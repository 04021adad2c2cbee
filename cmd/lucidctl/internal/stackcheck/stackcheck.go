// Package stackcheck implements `lucidctl validate phase2`: it checks a
// running stack end to end, as the Phase 2 validation meant to: health,
// discovery, anchoring with receipts verified offline, rate limits, auth,
// mTLS on internal ports, and the TRON-isolation scan of the source.
package stackcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/runningstack"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/isolation"
	"github.com/pickme/lucid/pkg/service"
)

// Options are the inputs of `lucidctl validate phase2`.
type Options struct {
	Env    *cli.Env
	Target runningstack.Flags
	Source string
}

// Status is a check's outcome.
type Status string

// The outcomes. A skipped check could not run here (its reason says why)
// and fails nothing.
const (
	StatusOK      Status = "ok"
	StatusFailed  Status = "failed"
	StatusSkipped Status = "skipped"
)

// CheckResult is one line of the validation.
type CheckResult struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Pass   bool   `json:"pass"` // Status is ok
	Detail string `json:"detail"`
}

// Result is the --json document.
type Result struct {
	Target string        `json:"target"`
	Checks []CheckResult `json:"checks"`
	Passed bool          `json:"passed"` // no check failed
}

// errSkipped says a check cannot run here; Reason says why.
type errSkipped struct{ reason string }

func (e *errSkipped) Error() string { return "skipped: " + e.reason }

func skip(format string, args ...any) error { return &errSkipped{fmt.Sprintf(format, args...)} }

// The thresholds of the checks, which their names and messages show.
const (
	// rateLimitProbes is how many free-tier requests may go unanswered
	// by a 429 (the free tier's burst is a tenth of its 100 a minute).
	rateLimitProbes = 200
	// anchorSealedWithin bounds the wait for the test anchor's block.
	anchorSealedWithin = 90 * time.Second
)

// check is one check of the validation, in the order they run.
type check struct {
	name string
	run  func(*validator, context.Context) (string, error) // a method expression
}

var checks = []check{
	{"services healthy and ready", (*validator).health},
	{"consul lists every service", (*validator).consul},
	{"anchor sealed, receipt valid", (*validator).anchor},
	{fmt.Sprintf("free tier limited (%d)", http.StatusTooManyRequests), (*validator).rateLimit},
	{fmt.Sprintf("no token refused (%d)", http.StatusUnauthorized), (*validator).noToken},
	{"internal ports need mTLS", (*validator).mesh},
	{"tron isolation", (*validator).isolation},
}

// NewCmd returns `lucidctl validate phase2`.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "phase2",
		Short: "Check a running stack end to end, as the Phase 2 validation should",
		Long: fmt.Sprintf(`Check a running stack (the local one by default):

  every service healthy and ready; Consul lists every service (skipped when
  the stack runs without Consul, on static discovery); an anchor submitted
  through the gateway with a minted token is sealed within %s and its
  receipt verifies offline; the free tier's limit answers %d within %d
  requests; a request without a token gets %d; internal ports refuse a
  caller without a mesh certificate; the TRON-isolation scan of the source
  tree (--source) passes.

One line per check: ok, FAIL, or skip with the reason a check cannot run
here (a skipped check fails nothing). Exit status 3 when any fails; --json
for a document.`, anchorSealedWithin, http.StatusTooManyRequests, rateLimitProbes, http.StatusUnauthorized),
		Example: `  lucidctl validate phase2
  lucidctl validate phase2 --port-offset 1000 --json
  lucidctl validate phase2 --target pi`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), opts) },
	}
	f := cmd.Flags()
	opts.Target.Add(f)
	f.StringVar(&opts.Source, "source", ".", "source tree for the isolation scan")
	return cli.SupportsJSON(cmd)
}

func run(ctx context.Context, opts *Options) error {
	if opts.Source == "" {
		return cli.Usage(errors.New("--source: a directory, not empty"))
	}
	e, err := opts.Target.Resolve(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer e.Close()
	v := &validator{e: e, client: e.Client(10 * time.Second), env: opts.Env, source: opts.Source}
	res := Result{Target: e.Gateway, Checks: []CheckResult{}}
	for _, c := range checks {
		detail, err := c.run(v, ctx)
		r := result(c.name, detail, err)
		res.Checks = append(res.Checks, r)
		if !opts.Env.JSON {
			printLine(opts.Env.IO.Out, r)
		}
	}
	res.Passed = !slices.ContainsFunc(res.Checks, func(r CheckResult) bool { return r.Status == StatusFailed })
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(res); err != nil {
			return err
		}
	}
	if !res.Passed {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}

// result makes a check's line from what it returned.
func result(name, detail string, err error) CheckResult {
	var sk *errSkipped
	switch {
	case errors.As(err, &sk):
		return CheckResult{Name: name, Status: StatusSkipped, Detail: sk.reason}
	case err != nil:
		return CheckResult{Name: name, Status: StatusFailed, Detail: err.Error()}
	}
	return CheckResult{Name: name, Status: StatusOK, Pass: true, Detail: detail}
}

// marks are the statuses as the text output spells them, all one width.
var marks = map[Status]string{StatusOK: "ok  ", StatusFailed: "FAIL", StatusSkipped: "skip"}

func printLine(w io.Writer, r CheckResult) {
	_, _ = fmt.Fprintf(w, "%s  %-28s %s\n", marks[r.Status], r.Name, r.Detail) // stdout; nowhere else to report
}

type validator struct {
	e      *runningstack.Endpoints
	client *http.Client
	env    *cli.Env
	source string
}

// errRemote skips a check that needs the internal ports.
var errRemote = skip("needs the local stack or a lucid.yaml target: internal ports are not reachable through a gateway URL")

func (v *validator) health(ctx context.Context) (string, error) {
	urls := map[string]string{"gateway": v.e.Gateway}
	for k, u := range v.e.Service {
		urls[k] = u
	}
	hc := v.e.Insecure(5 * time.Second)
	n := 0
	for _, s := range catalog.Services {
		u, ok := urls[s.Name]
		if !ok {
			continue
		}
		for _, p := range []string{"/health", "/ready"} {
			if err := api.Do(ctx, hc, api.Request{Method: http.MethodGet, URL: u + p}, nil); err != nil {
				if failing := failingChecks(err); failing != "" {
					err = fmt.Errorf("%s; %s's log says why", failing, s.Name)
				}
				return "", fmt.Errorf("%s %s: %w", s.Name, p, err)
			}
		}
		n++
	}
	return fmt.Sprintf("%d services answer /health and /ready", n), nil
}

// failingChecks names the failing checks of a /ready answer that is not
// ready ("not_ready: upstreams fail"), or is empty when err is not one.
// The gateway's public /ready gives names and status only, so that is
// what is shown for every service; the details are in the service's log
// (lucidctl logs).
func failingChecks(err error) string {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		return ""
	}
	var rd struct {
		Status string `json:"status"`
		Checks []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		} `json:"checks"`
	}
	if json.Unmarshal([]byte(ae.Message), &rd) != nil || rd.Status == "" {
		return ""
	}
	var failing []string
	for _, c := range rd.Checks {
		if c.Status != "ok" {
			failing = append(failing, c.Name+" "+c.Status)
		}
	}
	if len(failing) == 0 {
		return rd.Status
	}
	return rd.Status + ": " + strings.Join(failing, ", ")
}

// consul checks that Consul lists every service, when the stack runs
// with it. Whether it does is the mesh controller's to say: it registers
// the stack, and its /ready has a Consul check exactly when it was given
// a Consul (lucidctl up gives it one unless --consul off or no consul
// binary was found). A stack without Consul discovers statically, and
// there is nothing to check; a stack with it whose Consul is unreachable
// fails.
func (v *validator) consul(ctx context.Context) (string, error) {
	if v.e.Consul == "" || len(v.e.Service) == 0 {
		return "", errRemote
	}
	expected, err := v.meshUsesConsul(ctx)
	if err != nil {
		return "", fmt.Errorf("cannot tell whether the stack runs with Consul: %w", err)
	}
	if !expected {
		return "", skip("the stack runs without Consul (static discovery: lucidctl up --consul off, or no consul binary found); the mesh controller registers nothing")
	}
	var services map[string][]string
	if err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Consul + "/v1/catalog/services", Token: v.e.ConsulToken}, &services); err != nil {
		return "", fmt.Errorf("the mesh controller uses Consul, which does not answer: %w", err)
	}
	if v.e.ConsulToken == "" && len(services) == 0 {
		return "", errors.New("nothing shows in Consul without a token: CONSUL_HTTP_TOKEN is in neither the environment nor the env file")
	}
	var missing []string
	for _, s := range catalog.Services {
		if _, ok := services[s.Name]; !ok {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("not registered: %v", missing)
	}
	return fmt.Sprintf("%d services registered", len(catalog.Services)), nil
}

// meshUsesConsul reads the mesh controller's /ready, ready or not, for
// its Consul check.
func (v *validator) meshUsesConsul(ctx context.Context) (bool, error) {
	u, ok := v.e.Service[catalog.MeshService]
	if !ok {
		return false, errors.New("the mesh controller's address is unknown")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/ready", nil)
	if err != nil {
		return false, err
	}
	resp, err := v.e.Insecure(5 * time.Second).Do(req)
	if err != nil {
		return false, fmt.Errorf("mesh controller /ready: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var rd service.Readiness
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rd); err != nil {
		return false, fmt.Errorf("mesh controller /ready: %s, not its readiness (%w)", resp.Status, err)
	}
	if rd.Service == "" {
		return false, fmt.Errorf("mesh controller /ready: %s, not its readiness (it names no service)", resp.Status)
	}
	return slices.ContainsFunc(rd.Checks, func(c service.CheckResult) bool { return c.Name == meshapi.ConsulReadyCheck }), nil
}

func (v *validator) anchor(ctx context.Context) (string, error) {
	tok, err := v.e.Token("validate-"+uuid.NewString()[:8], auth.TierPremium)
	if err != nil {
		return "", err
	}
	probe, err := runningstack.NewAnchorProbe(ctx, v.e, tok, 10*time.Second)
	if err != nil {
		return "", err
	}
	m := runningstack.TestAnchor(uuid.NewString())
	if err := probe.Submit(ctx, m); err != nil {
		return "", fmt.Errorf("submit: %w", err)
	}
	var block uint64
	if err := probe.WaitSealed(ctx, []*chain.SessionAnchor{m}, anchorSealedWithin, func(_ *chain.SessionAnchor, st *anchoringapi.AnchorStatus) { block = st.Height }); err != nil {
		return "", err
	}
	return fmt.Sprintf("session %s sealed in block %d; receipt verified offline", m.SessionID[:8], block), nil
}

func (v *validator) rateLimit(ctx context.Context) (string, error) {
	tok, err := v.e.Token("validate-free-"+uuid.NewString()[:8], auth.TierFree)
	if err != nil {
		return "", err
	}
	for i := 1; i <= rateLimitProbes; i++ {
		err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Gateway + "/api/v1/chain/status", Token: tok}, nil)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
			return fmt.Sprintf("%d after %d requests", http.StatusTooManyRequests, i), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("%d requests at the free tier and no %d", rateLimitProbes, http.StatusTooManyRequests)
}

func (v *validator) noToken(ctx context.Context) (string, error) {
	err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Gateway + "/api/v1/chain/status"}, nil)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
		return fmt.Sprintf("%d %s", ae.Status, ae.Code), nil
	}
	if err == nil {
		return "", fmt.Errorf("a request without a token was answered; want %d", http.StatusUnauthorized)
	}
	return "", fmt.Errorf("without a token: %w, want %d", err, http.StatusUnauthorized)
}

func (v *validator) mesh(ctx context.Context) (string, error) {
	if len(v.e.Service) == 0 {
		return "", errRemote
	}
	hc := v.e.Insecure(5 * time.Second)
	for _, s := range catalog.Services {
		u, ok := v.e.Service[s.Name]
		if !ok || s.Name == catalog.MeshService {
			continue
		}
		err := api.Do(ctx, hc, api.Request{Method: http.MethodGet, URL: u + "/api/v1/nothing"}, nil)
		var ae *api.Error
		switch {
		case err == nil:
			return "", fmt.Errorf("%s answered a caller without a mesh certificate", s.Name)
		case !errors.As(err, &ae) || ae.Status != http.StatusForbidden:
			return "", fmt.Errorf("%s, called without a mesh certificate: %w, want %d", s.Name, err, http.StatusForbidden)
		}
	}
	return fmt.Sprintf("every internal service refuses a caller without a certificate (%d)", http.StatusForbidden), nil
}

// isolation scans the source tree under lucid.yaml's policy, and says
// what a clean scan proves there: which chain code was read, and whether
// a payment tree was there to be kept out of reach.
func (v *validator) isolation(ctx context.Context) (string, error) {
	cfg, err := v.env.Config()
	if err != nil {
		return "", err
	}
	var policy isolation.Policy
	if cfg.Isolation != nil {
		policy = *cfg.Isolation
	}
	if st, err := os.Stat(v.source); err != nil || !st.IsDir() {
		return "", skip("no source tree at %s (--source names it)", v.source)
	}
	merged := policy.Merge(v.source)
	var core []string
	for _, p := range merged.CorePaths {
		if st, err := os.Stat(filepath.Join(v.source, filepath.FromSlash(p))); err == nil && st.IsDir() {
			core = append(core, p)
		}
	}
	if len(core) == 0 {
		return "", skip("%s holds none of the policy's core paths (%s): no chain code to scan (--source names the source tree)",
			v.source, strings.Join(merged.CorePaths, ", "))
	}
	rep, err := isolation.Scan(ctx, v.source, policy)
	if err != nil {
		return "", err
	}
	if len(rep.Violations) > 0 {
		f := rep.Violations[0]
		return "", fmt.Errorf("%d violations, first %s:%d: %s", len(rep.Violations), f.Path, f.Line, f.Message)
	}
	proved := fmt.Sprintf("%d files scanned; the chain code (%d core paths) names no payment term and imports no payment module", rep.FilesScanned, len(core))
	if len(merged.IsolatedDirs) == 0 {
		return proved + "; this tree holds no payment tree, so there is none to reach", nil
	}
	return proved + " and reaches nothing in " + strings.Join(merged.IsolatedDirs, ", "), nil
}
