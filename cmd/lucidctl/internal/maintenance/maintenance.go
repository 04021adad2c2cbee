// Package maintenance implements `lucidctl maintenance`: the operator's
// work on deployed hosts (data-chain scrub and compaction, mesh CA
// rotation, chain voters), done through SSH against the services' ports on
// each host's loopback with the operator credential, so that no shell is
// needed in the images and no maintenance endpoint faces the network.
//
// The operator token (LUCID_OPERATOR_TOKEN) leaves lucidctl only as the
// bearer token of those requests. With the mesh on, the services speak TLS
// with mesh certificates, and each is verified against the mesh's trust
// bundle, itself authenticated by the MAC the controller computes with an
// enrolment token the operator derives from LUCID_MESH_TOKEN.
package maintenance

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/meshtls"
)

// NewCmd returns the maintenance command.
func NewCmd(env *cli.Env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "maintenance <command>",
		Short: "Scrub and compact the data chain, rotate the mesh CA, change the chain's voters",
		Long: `Maintenance of deployed hosts with the operator credential: each command
reaches the services on the host's loopback through SSH, as the Pi itself
sees them, and sends LUCID_OPERATOR_TOKEN as the bearer token. With the mesh
on, every service is verified by its mesh certificate against the mesh's
trust bundle, which is authenticated with LUCID_MESH_TOKEN.

Both tokens come from the environment or else the operator's env file
(local.env_file of lucid.yaml, by default configs/environment/.env.core).
Progress goes to stderr, the result to stdout (--json for scripts).`,
		Aliases: []string{"maint"},
		Args:    cli.Subcommands,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(newScrubCmd(env), newCompactCmd(env), newRotateCACmd(env), newVotersCmd(env))
	return cmd
}

// Flags choose the hosts and how to reach their services.
type Flags struct {
	fleet.Flags
	// PortOffset is the --port-offset the hosts' stack was rendered with
	// (lucidctl render): 0 on a Pi, which publishes the catalog's ports.
	PortOffset int
	// EnvFile holds the operator's tokens ("": local.env_file).
	EnvFile string
}

func (f *Flags) add(fs *pflag.FlagSet) {
	f.Flags.Add(fs, "the target or group of lucid.yaml to work on")
	_ = fs.MarkHidden("docker-socket") // fleet's, for the commands that talk to Docker
	fs.IntVar(&f.PortOffset, "port-offset", 0, "the --port-offset the hosts' stack was rendered with (0: the catalog's ports)")
	fs.StringVar(&f.EnvFile, "env-file", "", "the operator's env file, with LUCID_OPERATOR_TOKEN and LUCID_MESH_TOKEN (default: local.env_file of lucid.yaml)")
}

// credentials are the operator's: never printed, logged or put in an
// error.
type credentials struct {
	operator string // LUCID_OPERATOR_TOKEN
	// mesh is the controller's LUCID_MESH_TOKEN, from which the enrolment
	// token that authenticates the trust bundle is derived.
	mesh string
	// meshOn says the env file switches mTLS on (LUCID_MESH_URL): a
	// service that answers in plain HTTP is then refused.
	meshOn bool
	// source names where the operator token came from.
	source string
}

// readCredentials takes each value from the environment, else the env
// file.
func readCredentials(env *cli.Env, path string) (*credentials, error) {
	vals, err := env.OperatorEnv(path)
	if err != nil {
		return nil, err
	}
	path, value := vals.Path, vals.Value
	c := &credentials{}
	c.operator, c.source = value("LUCID_OPERATOR_TOKEN")
	c.mesh, _ = value("LUCID_MESH_TOKEN")
	meshURL, _ := value("LUCID_MESH_URL")
	c.meshOn = meshURL != ""
	if c.operator == "" {
		return nil, cli.WithHint(fmt.Errorf("LUCID_OPERATOR_TOKEN is in neither the environment nor %s", path),
			"`lucidctl render` generates it into the env file the deployment is rendered from; use that file (--env-file)")
	}
	return c, nil
}

// session is one host's services, reached through its SSH connection.
type session struct {
	host   *fleet.Host
	offset int
	creds  *credentials
	say    func(format string, args ...any) // progress on stderr, named by host
	// dial, when set, reaches the services instead of host's SSH
	// connection (the local stack, for restore's checks).
	dial func(addr string) (net.Conn, error)

	mu         sync.Mutex
	probed     bool
	tls        bool
	bundle     []*x509.Certificate
	transports []*http.Transport
}

// addr is where service listens on the host's loopback.
func (s *session) addr(service string) string {
	svc, _ := catalog.Lookup(service)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(svc.Port+s.offset))
}

// dialTCP connects to addr on the host's loopback.
func (s *session) dialTCP(addr string) (net.Conn, error) {
	if s.dial != nil {
		return s.dial(addr)
	}
	return s.host.SSH.DialTCP(addr)
}

// transport dials every connection to addr through SSH.
func (s *session) transport(addr string, tc *tls.Config) *http.Transport {
	tr := &http.Transport{
		DialContext:     func(context.Context, string, string) (net.Conn, error) { return s.dialTCP(addr) },
		TLSClientConfig: tc,
	}
	s.mu.Lock()
	s.transports = append(s.transports, tr)
	s.mu.Unlock()
	return tr
}

func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tr := range s.transports {
		tr.CloseIdleConnections()
	}
}

// secure finds out whether the host's services speak TLS (the mesh is
// on), and if so fetches and authenticates the mesh's trust bundle.
func (s *session) secure(ctx context.Context) error {
	s.mu.Lock()
	done := s.probed
	s.mu.Unlock()
	if done {
		return nil
	}
	on, err := s.speaksTLS(ctx, s.addr(catalog.MeshService))
	if err != nil {
		return err
	}
	if !on && s.creds.meshOn {
		return fmt.Errorf("the mesh controller at %s answers without TLS, but the env file sets LUCID_MESH_URL: refusing to send the operator token in the clear", s.addr(catalog.MeshService))
	}
	var bundle []*x509.Certificate
	if on {
		if bundle, err = s.fetchBundle(ctx, true); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.probed, s.tls, s.bundle = true, on, bundle
	s.mu.Unlock()
	return nil
}

// speaksTLS tries a TLS handshake with addr; nothing is sent over it.
func (s *session) speaksTLS(ctx context.Context, addr string) (bool, error) {
	conn, err := s.dialTCP(addr)
	if err != nil {
		return false, fmt.Errorf("is the stack running? %w", err)
	}
	defer conn.Close()
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// A probe only: whether the server speaks TLS; nothing is sent on it.
	tc := tls.Client(conn, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec // see above
	err = tc.HandshakeContext(hctx)
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	return err == nil, nil
}

// fetchBundle fetches the mesh's trust bundle (over TLS when the mesh is
// on) and checks its MAC with the gateway's enrolment token, derived from
// the mesh token: the connection need not be trusted for that.
func (s *session) fetchBundle(ctx context.Context, overTLS bool) ([]*x509.Certificate, error) {
	if s.creds.mesh == "" {
		return nil, cli.WithHint(errors.New("the mesh is on, and LUCID_MESH_TOKEN is in neither the environment nor the env file: the mesh's trust bundle cannot be authenticated"),
			"use the env file the deployment was rendered from (--env-file)")
	}
	scheme := "http"
	if overTLS {
		scheme = "https"
	}
	r := meshtls.NewRemote(scheme+"://"+s.addr(catalog.MeshService), meshapi.EnrolmentToken(s.creds.mesh, "gateway"))
	r.SetDialContext(func(context.Context, string, string) (net.Conn, error) {
		return s.dialTCP(s.addr(catalog.MeshService))
	})
	bundle, err := r.Bundle(ctx, "gateway")
	if err != nil {
		return nil, fmt.Errorf("the mesh's trust bundle: %w", err)
	}
	return bundle, nil
}

// client is an HTTP client for service that sends the operator token,
// verifying the service by its mesh certificate when the mesh is on.
// timeout 0 leaves the request to ctx.
func (s *session) client(ctx context.Context, service string, timeout time.Duration) (*http.Client, string, error) {
	if err := s.secure(ctx); err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	on, bundle := s.tls, s.bundle
	s.mu.Unlock()
	addr := s.addr(service)
	scheme, tc := "http", (*tls.Config)(nil)
	svc, _ := catalog.Lookup(service)
	if on && !svc.Public {
		scheme, tc = "https", meshtls.VerifyServerTLS(bundle, service)
	}
	hc := &http.Client{Timeout: timeout, Transport: api.WithBearer(s.transport(addr, tc), s.creds.operator)}
	return hc, scheme + "://" + addr, nil
}

// classify marks a refused operator credential as an authentication
// failure (exit 4).
func classify(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden) {
		return cli.Auth(cli.WithHint(err, "the host's services hold the SHA-256 of another LUCID_OPERATOR_TOKEN: use the env file the deployment was rendered from (--env-file)"))
	}
	return err
}

// Output is the --json result of a maintenance command: each host's
// result or error, and the hosts skipped as unreachable.
type Output[T any] struct {
	Hosts   []HostResult[T] `json:"hosts"`
	Skipped []SkippedHost   `json:"skipped,omitempty"`
}

// HostResult is one host's outcome.
type HostResult[T any] struct {
	Host   string `json:"host"`
	Result *T     `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// SkippedHost is a host that could not be reached (--skip-unreachable).
type SkippedHost struct {
	Host  string `json:"host"`
	Error string `json:"error"`
}

// Audit actions of the maintenance commands.
const (
	actionScrub        = "datachain.scrub"
	actionCompact      = "datachain.compact"
	actionRotateCA     = "mesh.rotate-ca"
	actionVoterAdd     = "chain.voters.add"
	actionVoterRemove  = "chain.voters.remove"
	progressEvery      = 10 * time.Second
	shortRequest       = 30 * time.Second
	progressHostPrefix = "%s: "
)

// each connects to the selected hosts and runs fn on all of them at once,
// each with its own session; the hosts' errors come back joined, each
// naming its host.
func each[T any](ctx context.Context, env *cli.Env, f *Flags, action string, fn func(context.Context, *session) (*T, error)) (*Output[T], error) {
	creds, err := readCredentials(env, f.EnvFile)
	if err != nil {
		return nil, err
	}
	fl, err := f.Connect(ctx, env)
	if err != nil {
		return nil, err
	}
	defer fl.Close()
	out := &Output[T]{Hosts: make([]HostResult[T], len(fl.Hosts))}
	index := map[string]int{}
	for i, h := range fl.Hosts {
		index[h.Name] = i
		out.Hosts[i].Host = h.Name
	}
	var mu sync.Mutex
	say := func(host, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(env.IO.ErrOut, progressHostPrefix+format+"\n", append([]any{host}, args...)...)
	}
	err = fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		s := &session{host: h, offset: f.PortOffset, creds: creds, say: func(format string, args ...any) { say(h.Name, format, args...) }}
		defer s.close()
		res, err := fn(ctx, s)
		err = classify(err)
		if aerr := recordMaintenance(ctx, h, action, err); aerr != nil {
			// The action stands; the trail not saying so fails the run.
			err = errors.Join(err, aerr)
		}
		hr := &out.Hosts[index[h.Name]]
		hr.Result = res
		if err != nil {
			hr.Error = err.Error()
		}
		return err
	})
	for _, u := range fl.Unreachable {
		out.Skipped = append(out.Skipped, SkippedHost{Host: u.Name, Error: u.Err.Error()})
	}
	if s := fl.SkippedSummary(); s != "" {
		fmt.Fprintln(env.IO.ErrOut, s)
	}
	return out, err
}

// recordMaintenance records one host's maintenance action and its outcome
// in the host's audit trail (pkg/deploy's): who ran which action, and the
// error if it failed.
func recordMaintenance(ctx context.Context, h *fleet.Host, action string, err error) error {
	d, derr := deploy.New(h.DeployConfig())
	if derr != nil {
		return fmt.Errorf("audit trail: %w", derr)
	}
	defer func() { _ = d.Close() }()
	e := deploy.AuditEntry{Action: deploy.AuditMaintenance, Args: []string{action}}
	if err != nil {
		e.Error = err.Error()
	}
	return d.Audit(ctx, e)
}

// fingerprint is the hex SHA-256 of a certificate, as the mesh reports its
// root.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// bytesText is n bytes for people.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// ticker says every progressEvery that what is still running, until the
// returned stop is called.
func ticker(s *session, what string) (stop func()) {
	done := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				s.say("still %s (%s)", what, time.Since(start).Round(time.Second))
			}
		}
	}()
	return func() { close(done) }
}
