package service

import (
	"crypto/sha256"
	"encoding/hex"
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
	// Public is the catalog's mark of a client-facing listener, which the
	// mesh's mTLS leaves alone.
	Public bool
	// MeshToken is LUCID_MESH_TOKEN, required with MeshURL and by the
	// controller: for the controller the mesh token, for any other service
	// its enrolment token (meshapi.EnrolmentToken), which obtains its own
	// leaf and nothing else.
	MeshToken string
	// ServiceKey, LUCID_SERVICE_KEY, is how the services know each other
	// when the mesh is off: each request carries a signature made with it
	// (see SignCaller). Required then, by every service but the mesh
	// controller; unused with the mesh, where certificates say who calls.
	ServiceKey []byte
	// OperatorTokenHash is the SHA-256 of the operator token,
	// LUCID_OPERATOR_TOKEN_SHA256 (hex): a request bearing that token may
	// use the operator's endpoints. Unset, nobody may.
	OperatorTokenHash []byte
}

// MTLS reports whether the service calls the others over mTLS.
func (c Config) MTLS() bool { return c.MeshURL != "" }

// Environment variables read by LoadConfig.
const (
	EnvAddr            = "LUCID_ADDR"
	EnvDataDir         = "LUCID_DATA_DIR"
	EnvLogLevel        = "LUCID_LOG_LEVEL"
	EnvShutdownTimeout = "LUCID_SHUTDOWN_TIMEOUT"
	EnvMeshURL         = "LUCID_MESH_URL"
	EnvMeshToken       = "LUCID_MESH_TOKEN"
	EnvTLSCertFile     = "LUCID_TLS_CERT_FILE"
	EnvTLSKeyFile      = "LUCID_TLS_KEY_FILE"
	EnvServiceKey      = "LUCID_SERVICE_KEY"
	EnvOperatorHash    = "LUCID_OPERATOR_TOKEN_SHA256"
)

// DefaultShutdownTimeout is LUCID_SHUTDOWN_TIMEOUT's default: how long a
// stopped service drains.
const DefaultShutdownTimeout = 15 * time.Second

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
		ShutdownTimeout: r.Duration(EnvShutdownTimeout, DefaultShutdownTimeout, 0, 10*time.Minute),
	}
	cfg.Public = svc.Public
	if u := r.URL(EnvMeshURL); u != nil {
		// The bootstrap token goes to this URL: never in the clear.
		if u.Scheme != "https" {
			r.Fail(EnvMeshURL, "must be an https URL (the mesh controller speaks TLS)")
		}
		cfg.MeshURL = u.String()
	}
	if cfg.MeshURL != "" || name == catalog.MeshService {
		why := "this service's mesh enrolment token"
		if name == catalog.MeshService {
			why = "the mesh token, from which each service's enrolment token is derived"
		}
		cfg.MeshToken = r.Secret(EnvMeshToken, catalog.SecretMinLen, why)
	}
	if cfg.MeshURL == "" && name != catalog.MeshService {
		cfg.ServiceKey = []byte(r.Secret(EnvServiceKey, catalog.SecretMinLen,
			"without the mesh ("+EnvMeshURL+"), the services know each other by this shared key"))
	}
	if h := r.String(EnvOperatorHash, ""); h != "" {
		sum, err := hex.DecodeString(h)
		if err != nil || len(sum) != sha256.Size {
			r.Fail(EnvOperatorHash, "must be 64 hex digits (the SHA-256 of the operator token)")
		}
		cfg.OperatorTokenHash = sum
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
