// Package mesh is the service mesh controller (`lucid mesh`, port 8088):
// it runs the mesh CA that gives every Lucid service its mTLS certificate,
// registers the services in Consul and keeps those registrations in line
// with what runs, and renders Envoy bootstraps for operators who run
// sidecars.
//
// Its API:
//
//	GET    /certificates/ca             trust bundle (PEM), MAC'd with the asking service's enrolment token
//	POST   /certificates/{service}      issue a leaf from a CSR (that service's enrolment token; rate-limited)
//	POST   /ca/rotate                   replace the root by cross-signing (operator; refused with a seed)
//	GET    /services                    every registered instance, healthy or not, from Consul
//	GET    /services/{name}             the instances of one service
//	POST   /services/register           register a service outside the stack (operator)
//	DELETE /services/{name}             deregister a service outside the stack (operator)
//	GET    /envoy/{service}/bootstrap   Envoy bootstrap (YAML) for that service's sidecar
//
// The controller holds the mesh token (LUCID_MESH_TOKEN); every other
// service holds only its enrolment token, derived from it for its name
// (meshapi.EnrolmentToken), which yields that service's leaf and nothing
// else. The registry and the bootstraps are read with a mesh certificate
// (mTLS) or the operator credential; what changes the mesh needs the
// operator credential (service.IsOperator).
//
// Consul runs with ACLs and default deny (pkg/consulacl). The controller
// holds Consul's management token (CONSUL_HTTP_TOKEN), registers with it,
// and keeps each service's Consul policy and token in place (acl.go).
//
// The Pis of a cluster share one CA: each controller starts from, or
// adopts, the seed CA in LUCID_MESH_CA_SEED (seed.go).
package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/consulacl"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/ratelimit"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/snapshot"
)

// App is the mesh controller.
type App struct {
	leafTTL    time.Duration
	signRate   int
	consulAddr string
	// consulToken is Consul's management token, CONSUL_HTTP_TOKEN.
	consulToken   string
	checkInterval time.Duration
	syncInterval  time.Duration
	// members are the stack's services to register, by name, at the
	// address their URL variable gives.
	members map[string]*url.URL

	// enrolment holds each service's enrolment token, by name.
	enrolment map[string][]byte
	// previousMesh are the mesh tokens before a rotation
	// (LUCID_MESH_PREVIOUS_TOKENS) and previous the enrolment tokens
	// derived from them: a service started with one still obtains its
	// leaf and trust bundle until the token's retirement.
	previousMesh []keyring.Entry
	previous     []previousEnrolment
	now          func() time.Time
	mtls         bool
	ca           *meshca.CA
	limiter      *ratelimit.Memory
	logger       *slog.Logger
	reg          *registrar
	metrics      *metrics

	// seedDir and seed are the cluster's CA seed (LUCID_MESH_CA_SEED),
	// read and checked at configuration: the CA starts from it or adopts
	// it (seed.go), and is not rotated here.
	seedDir string
	seed    *meshca.Seed

	loops    sync.WaitGroup
	stopSync context.CancelFunc
}

var (
	_ service.App        = (*App)(nil)
	_ service.MeshIssuer = (*App)(nil)
)

// New returns the mesh controller, ready to be configured.
func New() service.App { return &App{} }

// Configure reads the CA settings, Consul's address and management token,
// and where the stack's services are.
func (a *App) Configure(r *envconfig.Reader) {
	a.leafTTL = r.Duration("LUCID_MESH_LEAF_TTL", meshca.DefaultLeafTTL, time.Minute, 90*24*time.Hour)
	a.signRate = r.Int("LUCID_MESH_SIGN_RATE", 50, 1, 100_000)
	if a.seedDir = r.String(EnvCASeed, ""); a.seedDir != "" {
		// Read here, so a seed that cannot be used is a configuration
		// error reported before anything is opened or changed.
		seed, err := meshca.LoadSeed(a.seedDir)
		if err != nil {
			r.Fail(EnvCASeed, "%v", err)
		}
		a.seed = seed
	}
	if h := r.String("CONSUL_HOST", ""); h != "" {
		a.consulAddr = net.JoinHostPort(h, strconv.Itoa(r.Int("CONSUL_PORT", 8500, 1, 65535)))
		a.consulToken = consulacl.Token(r, "Consul's management token: the controller registers the stack with it and keeps each service's Consul token")
	}
	a.checkInterval = r.Duration("LUCID_MESH_CHECK_INTERVAL", time.Second, 100*time.Millisecond, 5*time.Minute)
	a.syncInterval = r.Duration("LUCID_MESH_SYNC_INTERVAL", 2*time.Second, 100*time.Millisecond, 5*time.Minute)
	a.members = map[string]*url.URL{}
	prev, err := keyring.Parse(r.String(keyring.MeshPrevious, ""))
	if err != nil {
		r.Fail(keyring.MeshPrevious, "%v", err)
	}
	for i, e := range prev {
		if len(e.Value) < catalog.SecretMinLen {
			r.Fail(keyring.MeshPrevious, "entry %d is %d bytes; at least %d are required", i+1, len(e.Value), catalog.SecretMinLen)
		}
	}
	a.previousMesh = prev
	for _, s := range catalog.Services {
		key := catalog.URLKey(s.Name)
		if u := r.URL(key); u != nil {
			if u.Port() == "" {
				r.Fail(key, "needs a port to be registered in Consul")
				continue
			}
			a.members[s.Name] = u
		}
	}
}

// Provision opens the CA and the registry, installs the API, and starts
// keeping Consul in line.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	cfg := srv.Config()
	a.logger = srv.Logger()
	a.enrolment = enrolmentTokens(cfg.MeshToken)
	for _, e := range a.previousMesh {
		if string(e.Value) != cfg.MeshToken {
			a.previous = append(a.previous, previousEnrolment{until: e.Until, tokens: enrolmentTokens(string(e.Value))})
		}
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.mtls = cfg.MTLS()
	if !a.mtls {
		a.logger.Warn("LUCID_MESH_URL is not set: the controller serves plain HTTP, so certificates and enrolment tokens cross the network in the clear")
	}
	ca, err := a.openCA(ctx, cfg.DataDir)
	if err != nil {
		return err
	}
	a.ca = ca
	a.logger.Info("mesh CA ready", "root_sha256", ca.Fingerprint(), "leaf_ttl", a.leafTTL.String(), "seeded", a.seed != nil)
	a.limiter = ratelimit.NewMemory(16)
	a.metrics = newMetrics(srv.Registerer())

	a.reg, err = openRegistrar(filepath.Join(cfg.DataDir, "mesh.db"), a.logger)
	if err != nil {
		return err
	}
	if a.consulAddr != "" {
		// The token is given explicitly, as read above, never picked up
		// from the process environment by the client.
		client, err := consul.NewClient(&consul.Config{Address: a.consulAddr, Scheme: "http", Token: a.consulToken})
		if err != nil {
			return fmt.Errorf("consul at %s: %w", a.consulAddr, err)
		}
		a.reg.consul = client
		a.reg.management = a.consulToken
		a.reg.desired = a.stackRegistrations()
		a.reg.syncs = a.metrics.syncs
		// Its own context, so Close can stop it even when the server never
		// ran (a port in use) and ctx is still live.
		rctx, stop := context.WithCancel(ctx)
		a.stopSync = stop
		a.loops.Add(1)
		go func() {
			defer a.loops.Done()
			a.reg.run(rctx, a.syncInterval)
		}()
		srv.AddDetailedCheck(meshapi.ConsulReadyCheck, a.reg.check)
	}
	if _, err := snapshot.Register(ctx, srv, a.takeSnapshot); err != nil {
		return err
	}
	a.routes(srv)
	return nil
}

// Close stops the registrar, which deregisters the stack, and closes its
// database.
func (a *App) Close() error {
	if a.stopSync != nil {
		a.stopSync()
	}
	a.loops.Wait()
	if a.reg != nil {
		return a.reg.close()
	}
	return nil
}

// stackCheckFailures is how many /ready checks in a row must fail before
// Consul marks a stack service critical.
const stackCheckFailures = 3

// stackRegistrations are the Consul registrations of the stack's services,
// each with an HTTP check on /ready.
func (a *App) stackRegistrations() []*consul.AgentServiceRegistration {
	var out []*consul.AgentServiceRegistration
	for _, s := range catalog.Services {
		u, ok := a.members[s.Name]
		if !ok {
			continue
		}
		port, _ := strconv.Atoi(u.Port())
		scheme, tags := s.Scheme(a.mtls), []string{"lucid", "core"}
		if scheme == "https" {
			tags = append(tags, "mtls")
		}
		out = append(out, &consul.AgentServiceRegistration{
			ID:      "lucid-" + s.Name,
			Name:    s.Name,
			Address: u.Hostname(),
			Port:    port,
			Tags:    tags,
			Meta: map[string]string{
				"container":  s.Container,
				"spiffe_id":  meshca.SPIFFEID(s.Name).String(),
				"managed_by": managedBy,
			},
			Check: &consul.AgentServiceCheck{
				CheckID:  "lucid-" + s.Name + "-ready",
				Name:     s.Name + " /ready",
				HTTP:     scheme + "://" + u.Host + "/ready",
				Interval: a.checkInterval.String(),
				Timeout:  min(a.checkInterval, 2*time.Second).String(),
				// One slow answer on a busy Pi must not take a service out
				// of the gateway's routing; three in a row do. The gateway's
				// own passive checks catch a dead instance sooner.
				FailuresBeforeCritical: stackCheckFailures,
				// /ready carries nothing secret, and Consul holds no mesh
				// certificate to prove the server with.
				TLSSkipVerify: scheme == "https",
			},
		})
	}
	return out
}

// MeshIssuer certifies the controller itself from its own CA.
func (a *App) MeshIssuer() meshtls.Issuer { return meshtls.Local(a.ca) }

type metrics struct {
	issued       *prometheus.CounterVec
	refused      prometheus.Counter
	enrolRefused *prometheus.CounterVec
	syncs        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_mesh_certificates_issued_total", Help: "Leaf certificates issued, by service.",
		}, []string{"service"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lucid_mesh_sign_rate_limited_total", Help: "Certificate requests refused by the signing rate limit.",
		}),
		enrolRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_mesh_enrolment_refused_total", Help: "Certificate requests refused for want of the service's enrolment token, by service.",
		}, []string{"service"}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_mesh_consul_syncs_total", Help: "Rounds of keeping Consul's registrations and ACL grants in place, by result (ok, failed).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.issued, m.refused, m.enrolRefused, m.syncs)
	return m
}
