package phase2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/isolation"
)

// ValidateOptions are the inputs of `lucidctl validate phase2`.
type ValidateOptions struct {
	Env    *cli.Env
	Target targetFlags
	Source string
}

// CheckResult is one line of the validation.
type CheckResult struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// NewValidateCmd returns `lucidctl validate phase2`.
func NewValidateCmd(env *cli.Env) *cobra.Command {
	opts := &ValidateOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "phase2",
		Short: "Check a running stack end to end, as the Phase 2 validation should",
		Long: `Check a running stack (the local one by default):

  every service healthy and ready; Consul lists every service;
  an anchor submitted through the gateway with a minted token is sealed and
  its receipt verifies offline; the free tier's limit answers 429; a request
  without a token gets 401; internal ports refuse a caller without a mesh
  certificate; the TRON-isolation scan of the source tree passes.

One line per check; exit status 3 when any fails; --json for a document.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runValidate(cmd.Context(), opts) },
	}
	f := cmd.Flags()
	opts.Target.add(f)
	f.StringVar(&opts.Source, "source", ".", "source tree for the isolation scan")
	return cli.SupportsJSON(cmd)
}

func runValidate(ctx context.Context, opts *ValidateOptions) error {
	e, err := opts.Target.resolve(ctx, opts.Env)
	if err != nil {
		return err
	}
	defer e.Close()
	v := &validator{e: e, client: e.client(10 * time.Second)}
	var results []CheckResult
	add := func(name string, err error, detail string) {
		r := CheckResult{Name: name, Pass: err == nil, Detail: detail}
		if err != nil {
			r.Detail = err.Error()
		}
		results = append(results, r)
		if !opts.Env.JSON {
			mark := "ok  "
			if !r.Pass {
				mark = "FAIL"
			}
			fmt.Fprintf(opts.Env.IO.Out, "%s  %-28s %s\n", mark, name, r.Detail)
		}
	}
	d, err := v.health(ctx)
	add("services healthy and ready", err, d)
	d, err = v.consul(ctx)
	add("consul lists every service", err, d)
	d, err = v.anchor(ctx)
	add("anchor sealed, receipt valid", err, d)
	d, err = v.rateLimit(ctx)
	add("free tier limited (429)", err, d)
	d, err = v.noToken(ctx)
	add("no token refused (401)", err, d)
	d, err = v.mesh(ctx)
	add("internal ports need mTLS", err, d)
	d, err = v.isolation(ctx, opts)
	add("tron isolation", err, d)

	failed := slices.ContainsFunc(results, func(r CheckResult) bool { return !r.Pass })
	if opts.Env.JSON {
		if err := opts.Env.PrintJSON(map[string]any{"target": e.Gateway, "checks": results, "passed": !failed}); err != nil {
			return err
		}
	}
	if failed {
		return &cli.SilentError{Code: cli.ExitProblems}
	}
	return nil
}

type validator struct {
	e      *endpoints
	client *http.Client
}

var errRemote = errors.New("needs the local stack or a lucid.yaml target: internal ports are not reachable through a URL")

func (v *validator) health(ctx context.Context) (string, error) {
	urls := map[string]string{"gateway": v.e.Gateway}
	for k, u := range v.e.Service {
		urls[k] = u
	}
	hc := v.e.insecure(5 * time.Second)
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

func (v *validator) consul(ctx context.Context) (string, error) {
	if v.e.Consul == "" {
		return "", errRemote
	}
	var services map[string][]string
	if err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Consul + "/v1/catalog/services", Token: v.e.consulToken}, &services); err != nil {
		return "", err
	}
	if v.e.consulToken == "" && len(services) == 0 {
		return "", errors.New("Consul shows nothing without a token: CONSUL_HTTP_TOKEN is in neither the environment nor the env file")
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

func (v *validator) anchor(ctx context.Context) (string, error) {
	tok, err := v.e.token("validate-"+uuid.NewString()[:8], auth.TierPremium)
	if err != nil {
		return "", err
	}
	probe, err := newAnchorProbe(ctx, v.e, tok, 10*time.Second)
	if err != nil {
		return "", err
	}
	m := testAnchor(uuid.NewString())
	if err := probe.submit(ctx, m); err != nil {
		return "", fmt.Errorf("submit: %w", err)
	}
	var block uint64
	if err := probe.waitSealed(ctx, []*chain.SessionAnchor{m}, 90*time.Second, func(_ *chain.SessionAnchor, st *anchoringapi.AnchorStatus) { block = st.Height }); err != nil {
		return "", err
	}
	return fmt.Sprintf("session %s sealed in block %d; receipt verified offline", m.SessionID[:8], block), nil
}

func (v *validator) rateLimit(ctx context.Context) (string, error) {
	tok, err := v.e.token("validate-free-"+uuid.NewString()[:8], auth.TierFree)
	if err != nil {
		return "", err
	}
	for i := 1; i <= 200; i++ {
		err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Gateway + "/api/v1/chain/status", Token: tok}, nil)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests {
			return fmt.Sprintf("429 after %d requests", i), nil
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("200 requests at the free tier and no 429")
}

func (v *validator) noToken(ctx context.Context) (string, error) {
	err := api.Do(ctx, v.client, api.Request{Method: http.MethodGet, URL: v.e.Gateway + "/api/v1/chain/status"}, nil)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
		return "401 " + ae.Code, nil
	}
	if err == nil {
		return "", errors.New("a request without a token was answered; want 401")
	}
	return "", fmt.Errorf("without a token: %v, want 401", err)
}

func (v *validator) mesh(ctx context.Context) (string, error) {
	if len(v.e.Service) == 0 {
		return "", errRemote
	}
	hc := v.e.insecure(5 * time.Second)
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
			return "", fmt.Errorf("%s, called without a mesh certificate: %v, want 403", s.Name, err)
		}
	}
	return "every internal service refuses a caller without a certificate (403)", nil
}

func (v *validator) isolation(ctx context.Context, opts *ValidateOptions) (string, error) {
	cfg, err := opts.Env.Config()
	if err != nil {
		return "", err
	}
	var policy isolation.Policy
	if cfg.Isolation != nil {
		policy = *cfg.Isolation
	}
	if _, err := os.Stat(opts.Source); err != nil {
		return "", err
	}
	rep, err := isolation.Scan(ctx, opts.Source, policy)
	if err != nil {
		return "", err
	}
	if len(rep.Violations) > 0 {
		f := rep.Violations[0]
		return "", fmt.Errorf("%d violations, first %s:%d: %s", len(rep.Violations), f.Path, f.Line, f.Message)
	}
	return fmt.Sprintf("%d files scanned, clean", rep.FilesScanned), nil
}
