package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/meshtls"
	"github.com/pickme/lucid/pkg/restoredata"
)

// App is what a service package adds to the shared plumbing. Its life:
// Configure reads and validates, Provision builds state and routes, and the
// server runs until the context ends; Close, if the App has it, cleans up.
type App interface {
	// Configure reads the service's own settings. Problems are recorded in r
	// so that every one is reported at once.
	Configure(r *envconfig.Reader)
	// Provision opens state, installs routes and readiness checks on srv,
	// and starts background work bound to ctx.
	Provision(ctx context.Context, srv *Server) error
}

// ConfigError reports a configuration the service refuses to start with.
type ConfigError struct {
	Service string
	Err     error
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s: invalid configuration:\n  %s", e.Service, strings.ReplaceAll(e.Err.Error(), "\n", "\n  "))
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Main runs the service called name: it validates the configuration from
// lookup, logs JSON lines to logw, and serves until ctx ends.
func Main(ctx context.Context, name string, app App, lookup envconfig.Lookup, logw io.Writer) error {
	return MainOn(ctx, nil, name, app, lookup, logw)
}

// MainOn is Main serving on ln instead of listening on LUCID_ADDR (a nil ln
// listens there): for a listener that is not a TCP socket of this
// process, such as a test's in-memory network. ln is closed by the time
// MainOn returns.
func MainOn(ctx context.Context, ln net.Listener, name string, app App, lookup envconfig.Lookup, logw io.Writer) (err error) {
	if ln != nil {
		// Serve closes it too; this covers the returns before serving.
		defer func() { _ = ln.Close() }()
	}
	r := envconfig.New(lookup)
	cfg := LoadConfig(r, name)
	app.Configure(r)
	if err := r.Err(); err != nil {
		return &ConfigError{Service: name, Err: err}
	}

	logger := NewLogger(logw, cfg.LogLevel, name)
	srv := New(cfg, logger)
	if c, ok := app.(io.Closer); ok {
		defer func() {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close: %w", cerr))
			}
		}()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory (LUCID_DATA_DIR): %w", err)
	}
	if err := restoredata.Incomplete(cfg.DataDir); err != nil {
		logger.Error("a restore did not finish", "error", err)
		return err
	}
	// A service gets its mesh certificate before Provision, so the clients
	// it makes there speak mTLS; the controller issues its own after
	// Provision has opened its CA.
	selfIssuer, isController := app.(MeshIssuer)
	if cfg.MTLS() && !isController {
		if err := obtainIdentity(ctx, srv, meshtls.NewRemote(cfg.MeshURL, cfg.MeshToken)); err != nil {
			return err
		}
	}
	if err := app.Provision(ctx, srv); err != nil {
		logger.Error("provision failed", "error", err)
		return fmt.Errorf("provision %s: %w", name, err)
	}
	if cfg.MTLS() && isController {
		if err := obtainIdentity(ctx, srv, selfIssuer.MeshIssuer()); err != nil {
			return err
		}
	}
	switch sv, own := app.(Serving); {
	case own:
		if ln == nil {
			if ln, err = srv.Listen(ctx); err != nil {
				break
			}
		}
		err = sv.ServeOn(ctx, ln, srv)
	case ln == nil:
		err = srv.Run(ctx)
	default:
		err = srv.Serve(ctx, ln)
	}
	if err != nil {
		logger.Error("server stopped", "error", err)
		return err
	}
	return nil
}

// MeshIssuer is implemented by the mesh controller, which certifies itself.
type MeshIssuer interface {
	MeshIssuer() meshtls.Issuer
}

// identityTimeout bounds the wait for the first mesh certificate; the
// supervisor or the container runtime restarts a service that gives up.
const identityTimeout = time.Minute

func obtainIdentity(ctx context.Context, srv *Server, issuer meshtls.Issuer) error {
	octx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	id, err := meshtls.Obtain(octx, srv.cfg.Name, issuer, meshtls.Options{Logger: srv.logger})
	if err != nil {
		srv.logger.Error("no mesh certificate", "error", err)
		return err
	}
	go id.Run(ctx)
	srv.SetIdentity(id)
	return nil
}

// Basic is an App with nothing but the shared endpoints. Services start
// from it until they grow routes of their own.
type Basic struct{}

var _ App = Basic{}

// Configure reads nothing.
func (Basic) Configure(*envconfig.Reader) {}

// Provision installs nothing.
func (Basic) Provision(context.Context, *Server) error { return nil }
