package service

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
)

// Config is the configuration every service has.
type Config struct {
	// Name is the catalog name of the service ("gateway", "engine", ...).
	Name string
	// Addr is the listen address, LUCID_ADDR (default ":<catalog port>").
	Addr string
	// DataDir holds the service's state, LUCID_DATA_DIR
	// (default /var/lib/lucid/<name>).
	DataDir string
	// LogLevel is LUCID_LOG_LEVEL: debug, info, warn or error.
	LogLevel slog.Level
	// ShutdownTimeout bounds the drain on SIGTERM, LUCID_SHUTDOWN_TIMEOUT.
	ShutdownTimeout time.Duration
	// MeshURL is the mesh controller, LUCID_MESH_URL. When set, the service
	// obtains a mesh certificate, serves mTLS and calls the others over it.
	MeshURL string
	// MeshToken is the mesh bootstrap token, LUCID_MESH_TOKEN: required
	// with MeshURL, and by the controller itself.
	MeshToken string
}

// MTLS reports whether the service speaks mTLS.
func (c Config) MTLS() bool { return c.MeshURL != "" }

// Environment variables read by LoadConfig.
const (
	EnvAddr            = "LUCID_ADDR"
	EnvDataDir         = "LUCID_DATA_DIR"
	EnvLogLevel        = "LUCID_LOG_LEVEL"
	EnvShutdownTimeout = "LUCID_SHUTDOWN_TIMEOUT"
	EnvMeshURL         = "LUCID_MESH_URL"
	EnvMeshToken       = "LUCID_MESH_TOKEN"
)

// LoadConfig reads the base configuration of the service called name. Errors
// are recorded in r; the caller checks r.Err once it has read its own keys.
func LoadConfig(r *envconfig.Reader, name string) Config {
	svc, ok := catalog.Lookup(name)
	if !ok {
		panic(fmt.Sprintf("service %q is not in the catalog", name))
	}
	cfg := Config{
		Name:            name,
		Addr:            r.ListenAddr(EnvAddr, ":"+strconv.Itoa(svc.Port)),
		DataDir:         r.String(EnvDataDir, filepath.Join("/var/lib/lucid", name)),
		ShutdownTimeout: r.Duration(EnvShutdownTimeout, 15*time.Second, 0, 10*time.Minute),
	}
	if u := r.URL(EnvMeshURL); u != nil {
		cfg.MeshURL = u.String()
	}
	if cfg.MeshURL != "" || name == catalog.MeshService {
		cfg.MeshToken = r.Secret(EnvMeshToken, catalog.SecretMinLen, "the mesh bootstrap token")
	}
	switch r.OneOf(EnvLogLevel, "info", "debug", "info", "warn", "error") {
	case "debug":
		cfg.LogLevel = slog.LevelDebug
	case "warn":
		cfg.LogLevel = slog.LevelWarn
	case "error":
		cfg.LogLevel = slog.LevelError
	default:
		cfg.LogLevel = slog.LevelInfo
	}
	return cfg
}
