// Package gateway is the API gateway (`lucid gateway`, port 8080), the only
// public door of a Lucid deployment: routing, JWT auth, tiered rate limits.
//
// So far it validates its configuration (it refuses to start without a
// strong JWT_SECRET_KEY) and serves the shared endpoints (/health, /ready,
// /metrics); routing and auth are built on this skeleton.
package gateway

import (
	"context"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/service"
)

// App is the gateway service.
type App struct {
	secret []byte
}

var _ service.App = (*App)(nil)

// New returns the gateway, ready to be configured.
func New() service.App { return &App{} }

// Configure reads JWT_SECRET_KEY, which the gateway cannot work without.
func (a *App) Configure(r *envconfig.Reader) {
	a.secret = []byte(r.Secret("JWT_SECRET_KEY", auth.MinSecretLen, "the gateway verifies client tokens with it"))
}

// Provision installs the gateway's routes; so far only the shared ones exist.
func (a *App) Provision(context.Context, *service.Server) error { return nil }
