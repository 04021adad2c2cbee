package maintenance

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshtls"
)

// RotateResult is one host's root rotation.
type RotateResult struct {
	// Fingerprint is the hex SHA-256 of the new root.
	Fingerprint string `json:"fingerprint"`
	// Before and After are the roots of the trust bundle (fingerprints):
	// after, the old roots stay until every leaf they vouched for expires.
	Before []string `json:"roots_before"`
	After  []string `json:"roots_after"`
	// Serving are the services that answered over TLS verified against
	// the new bundle once the root was rotated.
	Serving []string `json:"serving"`
}

// RotateCAOptions are the inputs of `lucidctl maintenance rotate-ca`.
type RotateCAOptions struct {
	Env   *cli.Env
	Flags Flags
}

func newRotateCACmd(env *cli.Env) *cobra.Command {
	opts := &RotateCAOptions{Env: env}
	cmd := &cobra.Command{
		Use:   "rotate-ca --target NAME",
		Short: "Rotate the mesh CA's root on the hosts",
		Long: `Make a new mesh root and intermediate on each host's mesh controller, the
new root cross-signed by the old one. Leaves issued afterwards chain to both;
the old root stays in the trust bundle until every leaf it vouched for has
expired (one leaf lifetime), and every service picks up the new bundle at its
next renewal, so no handshake fails.

Afterwards the new bundle is fetched (authenticated with LUCID_MESH_TOKEN)
and must hold the new root, and every internal service must answer over TLS
verified against it. A second rotation within one leaf lifetime is refused
by the controller.`,
		Example: `  lucidctl maintenance rotate-ca --target pi`,
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return runRotateCA(cmd.Context(), opts) },
	}
	opts.Flags.add(cmd.Flags())
	return cli.SupportsJSON(cmd)
}

func runRotateCA(ctx context.Context, opts *RotateCAOptions) error {
	out, err := each(ctx, opts.Env, &opts.Flags, []string{actionRotateCA}, rotateCA)
	if out == nil {
		return err
	}
	if perr := printOutput(opts.Env, out, func(h HostResult[RotateResult]) {
		r := h.Result
		fmt.Fprintf(opts.Env.IO.Out, "%s: mesh root rotated to %s; bundle holds %d root(s); serving: %s\n", h.Host, r.Fingerprint, len(r.After), strings.Join(r.Serving, ", "))
	}); perr != nil {
		return perr
	}
	return err
}

func rotateCA(ctx context.Context, s *session) (*RotateResult, error) {
	if err := s.Secure(ctx); err != nil {
		return nil, err
	}
	on := s.TLS()
	before, err := s.FetchBundle(ctx, on)
	if err != nil {
		return nil, err
	}
	res := &RotateResult{}
	for _, c := range before {
		res.Before = append(res.Before, fingerprint(c))
	}
	hc, base, err := s.Client(ctx, catalog.MeshService, shortRequest)
	if err != nil {
		return nil, err
	}
	s.Say("rotating the mesh root (bundle: %d root(s))", len(before))
	rot, err := meshapi.New(base, "", hc).Rotate(ctx) // the bearer token is the transport's
	if err != nil {
		return nil, err
	}
	res.Fingerprint = rot.Fingerprint
	s.Say("new root %s; checking the bundle and the services", rot.Fingerprint)
	after, err := s.FetchBundle(ctx, on)
	if err != nil {
		return res, err
	}
	for _, c := range after {
		res.After = append(res.After, fingerprint(c))
	}
	if !slices.Contains(res.After, rot.Fingerprint) {
		return res, fmt.Errorf("the mesh's trust bundle does not hold the new root %s", rot.Fingerprint)
	}
	// Every internal service answers over TLS verified against the new
	// bundle: the stack keeps serving.
	var failed []error
	for _, svc := range catalog.Services {
		if svc.Public {
			continue
		}
		if err := health(ctx, s, svc.Name, after); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", svc.Name, err))
			continue
		}
		res.Serving = append(res.Serving, svc.Name)
	}
	if len(failed) > 0 {
		return res, fmt.Errorf("after the rotation: %w", errors.Join(failed...))
	}
	s.Say("%d service(s) serving with the new bundle", len(res.Serving))
	return res, nil
}

// health asks service's /health, verifying it against bundle when the
// mesh is on.
func health(ctx context.Context, s *session, service string, bundle []*x509.Certificate) error {
	addr := s.Addr(service)
	scheme, tr := "http", s.Transport(addr, nil)
	if s.TLS() {
		scheme, tr = "https", s.Transport(addr, meshtls.VerifyServerTLS(bundle, service))
	}
	hc := &http.Client{Timeout: shortRequest, Transport: tr}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/health: %s", resp.Status)
	}
	return nil
}
