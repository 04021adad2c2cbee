// Package gateway is the API gateway (`lucid gateway`, port 8080), the only
// public door of a Lucid deployment: it routes by path prefix to the core
// services, verifies HS256 JWTs, applies tiered GCRA rate limits, sets
// X-Forwarded-* and X-Request-ID, and passes the caller's sub and tier
// upstream in headers it first strips from the request.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/edgetls"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/ratelimit"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
)

// App is the gateway service.
type App struct {
	// keys verify client tokens: JWT_SECRET_KEY and the previous keys
	// (JWT_PREVIOUS_KEYS) still within their retirement time.
	keys    *auth.Keyring
	routes  []routetable.Route
	lookup  func(string) string
	trusted []*net.IPNet
	limits  auth.PerTier[ratelimit.Limit]
	budgets auth.PerTier[*budget]
	// ownBudget limits calls to the gateway's own /ready and /metrics:
	// the free tier's size, its decisions metered apart (tier "own").
	ownBudget *budget
	cors      cors
	now       func() time.Time
	// redisURL, if set, moves the limiter's state to Redis so several
	// gateways share one budget. While Redis cannot decide, each gateway
	// limits from its own in-memory budget, or with failClosed refuses
	// requests (503). onErrorOpen remembers the retired value "open", read
	// as the default with a warning at start.
	redisURL    string
	failClosed  bool
	onErrorOpen bool

	limiter ratelimit.Limiter
	logger  *slog.Logger
	metrics *metrics
	closers []func() error
	pools   map[string]*pool
	tokens  *tokenCache
	// consulAddr, from CONSUL_HOST and CONSUL_PORT, switches upstreams
	// from static addresses to Consul's healthy instances.
	consulAddr string
	// consulToken is the gateway's own, read-only Consul token.
	consulToken string
	// gcPercent, unless GOGC is set, replaces the runtime's default.
	gcPercent int

	// verify holds what a token must carry besides a valid signature and
	// exp: the issuer and audience, when LUCID_JWT_ISSUER and
	// LUCID_JWT_AUDIENCE are set.
	verify []auth.ParseOption
	// concurrency bounds each principal's requests in progress, per tier;
	// inflight counts them.
	concurrency auth.PerTier[int]
	inflight    *inflight
	// uploadUnit is LUCID_RATE_UPLOAD_UNIT_BYTES: each started unit of a
	// request's body costs one more rate-limit unit.
	uploadUnit int64

	// proxies are the routes' handlers, longest prefix first; srv, own and
	// inFlight are the service's server, its handler (the gateway's own
	// endpoints) and its in-flight gauge, set by ServeOn.
	proxies []*routeProxy
	srv     *service.Server
	// tls is the public edge's TLS (LUCID_TLS_* and LUCID_ACME_*); hsts,
	// once it serves, the Strict-Transport-Security value, nil without.
	tls      edgetls.Config
	hsts     []byte
	own      fasthttp.RequestHandler
	inFlight prometheus.Gauge
	// sendTimeout, when set (by tests), replaces the const sendTimeout.
	sendTimeout time.Duration
	// connsPerAddr and conns bound the client connections (connlimit.go).
	connsPerAddr, conns int
}

// defaultGCPercent is the gateway's garbage-collection target. Its live
// heap is small (a few MiB plus about 20 KiB per open connection) while
// every request makes short-lived garbage, so collecting at 5x the live
// heap rather than 2x buys about 5-10 % more requests per second for a
// few MiB of memory (docs/gateway.md).
const defaultGCPercent = 400

// Close releases the Redis client, if any, and the idle upstream
// connections.
func (a *App) Close() error {
	for _, p := range a.pools {
		p.close()
	}
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

var _ service.App = (*App)(nil)

// New returns the gateway, ready to be configured.
func New() service.App { return &App{} }

// Configure reads JWT_SECRET_KEY and JWT_PREVIOUS_KEYS, the route table
// (LUCID_GATEWAY_ROUTES), the rate limits, trusted proxies and CORS.
func (a *App) Configure(r *envconfig.Reader) {
	current := r.Secret("JWT_SECRET_KEY", auth.MinSecretLen, "the gateway verifies client tokens with it")
	previous, err := keyring.Parse(r.String(keyring.JWTPrevious, ""))
	if err != nil {
		r.Fail(keyring.JWTPrevious, "%v", err)
	}
	if current != "" {
		if a.keys, err = auth.NewKeyring([]byte(current), previous); err != nil {
			r.Fail(keyring.JWTPrevious, "%v", err)
		}
	}
	if iss := r.String(auth.EnvIssuer, ""); iss != "" {
		a.verify = append(a.verify, auth.WithIssuer(iss))
	}
	if aud := r.String(auth.EnvAudience, ""); aud != "" {
		a.verify = append(a.verify, auth.WithAudience(aud))
	}
	routes, err := routetable.Load(r.String(routetable.EnvVar, ""))
	if err != nil {
		r.Fail(routetable.EnvVar, "%v", err)
	}
	a.routes = routes
	a.lookup = func(k string) string { return r.String(k, "") }
	if _, err := upstreams(a.routes, a.lookup); err != nil {
		r.Fail("routes", "%v", err)
	}
	a.connsPerAddr = r.Int("LUCID_CONNS_PER_ADDRESS", maxConnsPerAddr, 1, 1<<20)
	a.conns = r.Int("LUCID_CONNS_MAX", maxConns, 1, 1<<20)
	divisor := r.Int("LUCID_RATE_BURST_DIVISOR", 10, 1, 1000)
	a.limits = auth.PerTier[ratelimit.Limit]{}
	a.concurrency = auth.PerTier[int]{}
	// Requests in progress per principal at once, at each gateway: a free
	// principal gets 8 (a browser's 6 connections to a host and a couple
	// of follow streams); premium 32 and enterprise 128 carry several
	// session pipelines with their streams. What they bound is long-lived
	// streams: one user cannot hold unbounded upstream connections.
	for _, t := range []struct {
		tier       auth.Tier
		key        string
		def        int
		concurrent int
	}{{auth.TierFree, "FREE", 100, 8}, {auth.TierPremium, "PREMIUM", 1000, 32}, {auth.TierEnterprise, "ENTERPRISE", 10000, 128}} {
		// Bounded so one request's interval stays at least a microsecond,
		// the Redis limiter's resolution.
		n := r.Int("LUCID_RATE_"+t.key, t.def, 1, 10_000_000)
		a.limits[t.tier] = ratelimit.Limit{Limit: n, Period: time.Minute, Burst: max(n/divisor, 1)}
		a.concurrency[t.tier] = r.Int("LUCID_CONCURRENCY_"+t.key, t.concurrent, 1, 1_000_000)
	}
	a.uploadUnit = int64(r.Int("LUCID_RATE_UPLOAD_UNIT_BYTES", defaultUploadUnit, 1024, 1<<30))
	for _, c := range strings.Split(r.String("LUCID_TRUSTED_PROXIES", ""), ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		if !strings.Contains(c, "/") {
			if strings.Contains(c, ":") {
				c += "/128"
			} else {
				c += "/32"
			}
		}
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			r.Fail("LUCID_TRUSTED_PROXIES", "%q is not an address or CIDR", c)
			continue
		}
		a.trusted = append(a.trusted, n)
	}
	a.cors = newCORS(r.String("LUCID_CORS_ORIGINS", ""))
	a.tls = edgetls.Read(r, r.String(service.EnvDataDir, filepath.Join("/var/lib/lucid", catalog.GatewayService)))
	a.redisURL = r.String("REDIS_URL", "")
	if h := r.String("CONSUL_HOST", ""); h != "" {
		a.consulAddr = net.JoinHostPort(h, strconv.Itoa(r.Int("CONSUL_PORT", 8500, 1, 65535)))
		a.consulToken = consulToken(r)
	}
	if strings.EqualFold(r.String(envOnError, ""), "open") {
		// "open" let requests through unlimited while Redis was down. It
		// is no longer a choice, but refusing it would stop a gateway whose
		// env file still says it: it becomes the default, loudly.
		a.onErrorOpen = true
	} else {
		a.failClosed = r.OneOf(envOnError, "local", "local", "closed") == "closed"
	}
	if r.String("GOGC", "") == "" { // the runtime has applied an operator's own
		a.gcPercent = defaultGCPercent
	}
	a.now = time.Now
}

// Provision builds a proxy per route and registers them.
func (a *App) Provision(ctx context.Context, srv *service.Server) error {
	ups, err := upstreams(a.routes, a.lookup)
	if err != nil {
		return err
	}
	a.logger = srv.Logger()
	if a.gcPercent > 0 {
		debug.SetGCPercent(a.gcPercent)
	}
	a.metrics = newMetrics(srv.Registerer())
	if a.onErrorOpen {
		a.logger.Warn(envOnError + "=open is retired: a failing Redis no longer lifts the limits; " +
			"treating it as local (each gateway limits from its own budget while Redis cannot decide); set local or closed")
	}
	if a.limiter == nil {
		if a.redisURL != "" {
			client, err := ratelimit.ParseRedisURL(a.redisURL)
			if err != nil {
				return err
			}
			a.closers = append(a.closers, client.Close)
			shared := ratelimit.NewRedis(client, "lucid:ratelimit:")
			if a.failClosed {
				// Without Redis every request is refused: not ready.
				a.limiter = shared
				srv.AddCheck("ratelimit-redis", func(ctx context.Context) error { return client.Ping(ctx).Err() })
			} else {
				// Without Redis the gateway still serves, within its own
				// budgets: the metrics and the log say so, not /ready.
				a.limiter = a.newFallback(shared, srv.Registerer())
			}
		} else {
			a.limiter = ratelimit.NewMemory(memoryKeys)
		}
	}
	a.budgets = newBudgets(a.limits, a.concurrency, a.metrics)
	a.ownBudget = ownBudget(a.budgets.Of(auth.TierFree), a.metrics)
	a.inflight = newInflight()
	a.tokens = newTokenCache(100_000)
	a.pools = map[string]*pool{}
	// With the mesh on, the Lucid services are called over mTLS, each
	// through connections that accept only that service's identity; the
	// Phase 1 auth service is not in the mesh and keeps its own scheme.
	for svc, u := range ups {
		var tlsConfig *tls.Config
		if _, ok := catalog.Lookup(svc); ok && srv.Identity() != nil {
			tlsConfig = srv.MeshClientTLS(svc)
		}
		a.pools[svc] = newPool(svc, tlsConfig, u)
	}
	a.proxies = nil
	for _, rt := range a.routes {
		h := a.newRouteProxy(rt, a.pools[rt.Service])
		if _, ok := catalog.Lookup(rt.Service); ok && srv.Identity() == nil {
			h.signer = service.NewCallerSigner(srv.Config().ServiceKey, catalog.GatewayService)
		}
		a.proxies = append(a.proxies, h)
	}
	sortRoutes(a.proxies)
	mode := "static"
	if a.consulAddr != "" {
		mode = "consul"
		if err := a.discover(ctx); err != nil {
			return err
		}
	}
	// The Lucid services the routes name are probed and make readiness;
	// the Phase 1 auth service is outside the stack, and need not be up
	// for ours.
	var routedServices []string
	for svc, p := range a.pools {
		if svc != routetable.AuthService {
			go p.probeLoop(ctx, srv.Client(svc, time.Second))
			routedServices = append(routedServices, svc)
		}
	}
	slices.Sort(routedServices)
	srv.AddDetailedCheck("upstreams", func(context.Context) (string, error) {
		var parts, missing []string
		for _, svc := range routedServices {
			h := a.pools[svc].healthyURLs(a.now())
			parts = append(parts, svc+"="+strings.Join(h, ","))
			if len(h) == 0 {
				missing = append(missing, svc)
			}
		}
		detail := mode + ": " + strings.Join(parts, " ")
		if len(missing) > 0 {
			return detail, fmt.Errorf("no healthy instance of %s", strings.Join(missing, ", "))
		}
		return detail, nil
	})
	return nil
}

// envOnError chooses what happens while Redis cannot decide.
const envOnError = "LUCID_RATE_LIMIT_ON_ERROR"

// memoryKeys bounds an in-memory limiter's keys (about 100 bytes each).
const memoryKeys = 1_000_000

// newFallback wraps the shared limiter so that, while Redis cannot decide,
// this gateway decides from its own in-memory budget: a per-gateway limit
// rather than none. The move each way is logged once, and metered.
func (a *App) newFallback(shared ratelimit.Limiter, reg prometheus.Registerer) *ratelimit.Fallback {
	fb := ratelimit.NewFallback(shared, ratelimit.NewMemory(memoryKeys), ratelimit.FallbackOptions{
		OnChange: func(active bool, err error) {
			if active {
				a.logger.Warn("rate limits: Redis cannot decide; this gateway limits from its own budget until it answers", "error", err)
			} else {
				a.logger.Warn("rate limits: Redis answers again; budgets are shared again")
			}
		},
	})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "lucid_gateway_ratelimit_fallback_active",
			Help: "1 while Redis cannot decide and this gateway limits from its own in-memory budget, else 0.",
		}, func() float64 {
			if fb.Active() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "lucid_gateway_ratelimit_fallback_decisions_total",
			Help: "Rate-limit decisions made from this gateway's own budget because Redis could not decide.",
		}, func() float64 { return float64(fb.LocalDecisions()) }),
	)
	return fb
}

type metrics struct {
	upstreamLatency    *prometheus.HistogramVec
	decisions          *prometheus.CounterVec
	upstreamErrors     *prometheus.CounterVec
	authFailures       prometheus.Counter
	bodyUnits          *prometheus.CounterVec
	inProgress         *prometheus.GaugeVec
	concurrencyLimited *prometheus.CounterVec
	parked             prometheus.Gauge
	connsRefused       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "lucid_gateway_upstream_duration_seconds", Help: "Time from sending a request upstream to its response headers, by service.",
			Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}, []string{"service"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_gateway_ratelimit_decisions_total", Help: "Rate-limit decisions by tier and outcome.",
		}, []string{"tier", "outcome"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_gateway_upstream_errors_total", Help: "Requests the gateway could not get answered upstream.",
		}, []string{"service"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "lucid_gateway_auth_failures_total", Help: "Requests refused for a missing or invalid token."}),
		bodyUnits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_gateway_ratelimit_body_units_total", Help: "Rate-limit units charged for request bodies (beyond each request's own), by tier.",
		}, []string{"tier"}),
		inProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lucid_gateway_requests_in_progress", Help: "Requests being proxied, by the tier they count against.",
		}, []string{"tier"}),
		concurrencyLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lucid_gateway_concurrency_limited_total", Help: "Requests refused (429) because their principal had its tier's limit of requests in progress.",
		}, []string{"tier"}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lucid_gateway_parked_connections", Help: "Idle keep-alive client connections parked until their next request, holding no goroutine or buffer of the HTTP server's.",
		}),
	}
	m.connsRefused = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "lucid_gateway_connections_refused_total", Help: "Client connections closed on accept: their address held as many as one address may, or the gateway as many as it takes.",
	})
	reg.MustRegister(m.upstreamLatency, m.decisions, m.upstreamErrors, m.authFailures, m.bodyUnits, m.inProgress, m.concurrencyLimited, m.parked, m.connsRefused)
	return m
}
