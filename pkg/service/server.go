package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/singleflight"

	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/quietconn"
)

// Server timeouts. Slowloris-style clients are cut off by ReadHeaderTimeout;
// bodies (chunks up to 16 MiB from a Pi on Wi-Fi) get ReadTimeout. There is
// no WriteTimeout: follow streams are long-lived by design, and handlers that
// need a write deadline set one with http.ResponseController.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
)

// Server is one service's HTTP server with the shared endpoints and
// middleware in place.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	mux      *http.ServeMux
	registry *prometheus.Registry
	metrics  *httpMetrics
	handler  http.Handler

	mu       sync.Mutex
	checks   []namedCheck
	draining atomic.Bool
	fallback atomic.Pointer[http.Handler]
	identity atomic.Pointer[meshtls.Identity]

	// readyRuns shares one run of the checks among concurrent /ready
	// callers.
	readyRuns singleflight.Group

	// lastFailure is each failing check's error as last logged (a public
	// listener, whose /ready does not show it); under mu.
	lastFailure map[string]string
}

// metricsQueue is how many /metrics requests wait while one is answered;
// any more get 503 at once. Anyone may ask a public listener's, and any
// container on the Pi's network an internal one's (the shared endpoints
// need no credential), and a gather of every metric costs what about 30
// proxied requests do (the gateway's: 820 µs of CPU against 28 for a
// 404), so a flood of them could take every core from the requests the
// server is for: answered one at a time they take at most one. A few wait
// rather than fail, so that monitors asking at the same moment all get
// answers.
const metricsQueue = 4

// oneAtATime serves h one request at a time: up to queue more wait their
// turn (or until they give up), and any beyond get 503.
func oneAtATime(h http.Handler, queue int) http.Handler {
	admitted := make(chan struct{}, 1+queue) // the one served and those waiting
	serving := make(chan struct{}, 1)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case admitted <- struct{}{}:
		default:
			http.Error(w, "too many requests for this at once", http.StatusServiceUnavailable)
			return
		}
		defer func() { <-admitted }()
		select {
		case serving <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		defer func() { <-serving }()
		h.ServeHTTP(w, r)
	})
}

// New provisions a server for cfg: /health, /ready and /metrics are routed,
// and every route gets request IDs, logging, metrics and panic recovery.
func New(cfg Config, logger *slog.Logger) *Server {
	bi := buildinfo.Read()
	s := &Server{
		cfg:      cfg,
		logger:   logger,
		mux:      http.NewServeMux(),
		registry: newRegistry(map[string]string{"service": cfg.Name, "version": bi.Version, "commit": bi.Commit, "go_version": bi.GoVersion}),
	}
	s.metrics = newHTTPMetrics(s.registry)
	s.handler = requestIDMiddleware(instrument(logger, s.metrics, recoverPanics(logger, s.identify(s.mux))))

	s.Handle("GET /health", s.handleHealth)
	s.Handle("GET /ready", s.handleReady)
	metrics := promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{
		Registry: s.registry,
		// A failed gather answers 500; its cause belongs in the log.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError),
	})
	s.mux.Handle("GET /metrics", oneAtATime(metrics, metricsQueue))
	s.mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := s.fallback.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		WriteError(w, r, s.logger, Errorf(http.StatusNotFound, CodeNotFound, "no such endpoint"))
	}))
	return s
}

// SetFallback serves every request no route matches (by default a JSON
// 404); the gateway puts its proxy here.
func (s *Server) SetFallback(h http.Handler) { s.fallback.Store(&h) }

// Handle routes pattern (ServeMux syntax) to h; a returned error is written
// as a JSON error response and logged.
func (s *Server) Handle(pattern string, h HandlerFunc) {
	s.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			WriteError(w, r, s.logger, err)
		}
	}))
}

// HandleHTTP routes pattern to a plain http.Handler, such as a reverse proxy.
func (s *Server) HandleHTTP(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AddCheck adds a dependency to /ready.
func (s *Server) AddCheck(name string, c Check) {
	s.AddDetailedCheck(name, func(ctx context.Context) (string, error) { return "", c(ctx) })
}

// AddDetailedCheck adds a dependency to /ready whose result carries a
// detail line.
func (s *Server) AddDetailedCheck(name string, c DetailedCheck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, namedCheck{name, c})
}

// Registerer is where a service registers its own metrics.
func (s *Server) Registerer() prometheus.Registerer { return s.registry }

// Config is the service's base configuration.
func (s *Server) Config() Config { return s.cfg }

// Logger is the service's logger.
func (s *Server) Logger() *slog.Logger { return s.logger }

// SetIdentity switches the server to mTLS with id: Serve then listens with
// TLS and the mesh's allow list, and Client calls the others over mTLS.
// It is set once, before Serve.
func (s *Server) SetIdentity(id *meshtls.Identity) { s.identity.Store(id) }

// Identity is the service's mesh identity, or nil when mTLS is off.
func (s *Server) Identity() *meshtls.Identity { return s.identity.Load() }

// Client returns an HTTP client for calling the Lucid service called
// target: over mTLS when the mesh is on, accepting only a server that holds
// target's identity (and only if the allow list lets this service call
// it); signed with the service key otherwise. Towards a service this one
// acts for users towards, a request passes on the principal of the
// request its context belongs to. A zero timeout means none (for streams).
func (s *Server) Client(target string, timeout time.Duration) *http.Client {
	c := &http.Client{Timeout: timeout}
	switch id := s.identity.Load(); {
	case id != nil:
		c.Transport = &principalTransport{base: id.Transport(nil, s.calling(target)), caller: s.cfg.Name, target: target}
	case len(s.cfg.ServiceKey) > 0:
		c.Transport = &signingTransport{base: http.DefaultTransport, key: s.cfg.ServiceKey, caller: s.cfg.Name, target: target}
	}
	return c
}

// MeshClientTLS is the TLS configuration for calling target over mTLS, or
// nil when the mesh is off: for services that build their own transports,
// such as the gateway.
func (s *Server) MeshClientTLS(target string) *tls.Config {
	if id := s.identity.Load(); id != nil {
		return id.ClientTLS(s.calling(target))
	}
	return nil
}

// calling is the client side of the allow list for one target: the server
// must be exactly target, so a service that may be called cannot stand in
// for another.
func (s *Server) calling(target string) meshtls.Authorizer {
	allowed := catalog.MayCall(s.cfg.Name, target)
	return func(server string) bool { return allowed && server == target }
}

// mayBeCalledBy is the server side of the allow list.
func (s *Server) mayBeCalledBy(caller string) bool { return catalog.MayCall(caller, s.cfg.Name) }

// Handler is the complete handler chain, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Run listens on the configured address and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := s.Listen(ctx)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends, then stops accepting, reports
// "draining" on /ready, and waits up to the shutdown timeout for requests in
// flight. Requests still running after that are cut off and Serve says so.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	ln = quietconn.Listener(ln) // under TLS, if any
	switch id := s.identity.Load(); {
	case s.cfg.Public:
		// Clients reach a public listener without mesh certificates; its
		// TLS, if any, is the app's (the gateway serves its own listener).
	case id != nil:
		ln = tls.NewListener(ln, id.ServerTLS(s.mayBeCalledBy))
		scheme = "https (mTLS)"
	}
	bi := buildinfo.Read()
	s.logger.Info("serving", "addr", ln.Addr().String(), "scheme", scheme, "version", bi.Version, "commit", bi.Commit)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	s.draining.Store(true)
	s.logger.Info("shutting down", "deadline", s.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		_ = srv.Close()
		return fmt.Errorf("shutdown: requests still running after %s were cut off", s.cfg.ShutdownTimeout)
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	s.logger.Info("stopped")
	return nil
}
