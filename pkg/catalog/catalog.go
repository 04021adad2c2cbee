// Package catalog is the one list of Lucid's core services: their names,
// containers, ports and the services each one needs before it can start.
//
// Everything that enumerates services reads it: `lucid --help`, the local
// supervisor behind `lucidctl up`, and later the compose renderer and the
// deploy health gate. A new service joins all of them by being added to
// Services here (and its package to cmd/lucid's dispatch table, which a test
// keeps in step).
package catalog

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pickme/lucid/pkg/keyring"
)

// Service describes one core service of the lucid binary.
type Service struct {
	// Name is the subcommand of the lucid binary: `lucid <Name>`.
	Name string
	// Summary is the one-line description shown by `lucid --help`.
	Summary string
	// Container is the compose service and container name.
	Container string
	// Port is the TCP port the service listens on by default.
	Port int
	// DependsOn names the services this one needs to start: they must be
	// ready first, and naming this service runs them too (Closure).
	DependsOn []string
	// After names services this one starts after when they run as well,
	// without needing them: the gateway routes to every service, and a
	// route to one that is absent answers 503 until it runs. Closure
	// leaves them out.
	After []string
	// Secrets names the environment variables the service refuses to start
	// without, beside the mesh credential (see RequiredSecrets; a test
	// checks each service's configuration agrees).
	Secrets []string
	// Env names every other variable the service reads, beside SharedEnv:
	// a service's env file holds these and nothing else, so no container
	// gets a secret it does not use (a test checks the list against what
	// each service's configuration reads).
	Env []string
	// URLEnv names extra variables that carry this service's URL to the
	// others, beside LUCID_<NAME>_URL: the Phase 2 names.
	URLEnv []string
	// ExtraPorts are further listen addresses, by environment variable,
	// with their default ports (the engine's Raft transport).
	ExtraPorts map[string]int
	// UsesConsul marks services that register in or discover through
	// Consul, and so start after it when it runs.
	UsesConsul bool
	// Public marks the service whose listener faces clients (the gateway):
	// it never serves mesh mTLS, only plain HTTP or an operator's TLS
	// certificate, though its own calls to the others use mTLS.
	Public bool
	// Calls names the services this one sends requests to: the mesh's
	// allow list. With mTLS on, any other call is refused (every service
	// may call the mesh controller).
	Calls []string
	// PassesPrincipal marks a service that acts for users towards the
	// services it calls: the gateway, which turns a verified token into a
	// principal, and the data chain, which anchors a sealed session for
	// its owner. A service believes the principal headers only from these.
	PassesPrincipal bool
}

// SecretMinLen is the shortest value a Secrets variable may have.
const SecretMinLen = 32

// SharedEnv names the variables every service reads (package service's
// base configuration), and every service but the mesh controller reads
// LUCID_SERVICE_KEY too.
var SharedEnv = []string{"LUCID_ADDR", "LUCID_DATA_DIR", "LUCID_LOG_LEVEL", "LUCID_SHUTDOWN_TIMEOUT",
	"LUCID_MESH_URL", "LUCID_MESH_TOKEN", "LUCID_OPERATOR_TOKEN_SHA256"}

// urlKeys names the variables that say where each service is
// (LUCID_<NAME>_URL).
func urlKeys(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = URLKey(n)
	}
	return out
}

// URLKey is the variable that says where the service called name is.
func URLKey(name string) string { return "LUCID_" + strings.ToUpper(name) + "_URL" }

// Vars names every variable s reads.
func (s Service) Vars() []string {
	out := append(slices.Clone(SharedEnv), s.Env...)
	if s.Name != MeshService {
		out = append(out, "LUCID_SERVICE_KEY")
	}
	return out
}

// Reads reports whether s reads the variable key.
func (s Service) Reads(key string) bool { return slices.Contains(s.Vars(), key) }

// RequiredSecrets is what s refuses to start without: its Secrets, and
// the credential the services know each other by, which is the mesh
// enrolment token with the mesh on and the shared service key without it
// (the mesh controller holds the mesh token either way).
func (s Service) RequiredSecrets(mesh bool) []string {
	out := slices.Clone(s.Secrets)
	switch {
	case s.Name == MeshService:
	case mesh:
		out = append(out, "LUCID_MESH_TOKEN")
	default:
		out = append(out, "LUCID_SERVICE_KEY")
	}
	return out
}

// Services lists the core services in a valid start order.
var Services = []Service{
	{
		Name:      "mesh",
		Summary:   "service mesh controller: Consul registration, mesh CA, Envoy configs",
		Container: "lucid-service-mesh-controller",
		Port:      8088,
		Secrets:   []string{"LUCID_MESH_TOKEN"},
		Env: append([]string{keyring.MeshPrevious, "LUCID_MESH_LEAF_TTL", "LUCID_MESH_SIGN_RATE", "LUCID_MESH_CA_SEED", "LUCID_MESH_CHECK_INTERVAL", "LUCID_MESH_SYNC_INTERVAL",
			"CONSUL_HOST", "CONSUL_PORT", "CONSUL_HTTP_TOKEN"}, urlKeys("engine", "anchoring", "blocks", "datachain", "gateway")...),
		UsesConsul: true,
	},
	{
		Name:       "engine",
		Summary:    "blockchain engine: mempool, block production, consensus, chain store",
		Container:  "lucid-blockchain-engine",
		Port:       8084,
		URLEnv:     []string{"BLOCKCHAIN_ENGINE_URL", "BLOCKCHAIN_CORE_URL"},
		ExtraPorts: map[string]int{"LUCID_RAFT_ADDR": 8094},
		Env: []string{"LUCID_CHAIN_ID", "LUCID_NODE_ID", "LUCID_BLOCK_INTERVAL", "LUCID_RAFT_ADDR", "LUCID_RAFT_ADVERTISE",
			"LUCID_RAFT_BOOTSTRAP", "LUCID_RAFT_FAST", "LUCID_RAFT_REQUIRE_MTLS", "LUCID_MEMPOOL_MAX_TXS", "LUCID_MEMPOOL_MAX_BYTES", "LUCID_BLOCK_MAX_TXS",
			"LUCID_STREAMS_PER_USER", "LUCID_STREAMS_MAX"},
	},
	{
		Name:      "anchoring",
		Summary:   "session anchoring: manifests in, anchor transactions out, receipts",
		Container: "lucid-session-anchoring",
		Port:      8085,
		DependsOn: []string{"engine"},
		Calls:     []string{"engine"},
		Env: []string{"BLOCKCHAIN_ENGINE_URL", "LUCID_ANCHOR_BATCH", "LUCID_ANCHOR_RESUBMIT",
			"LUCID_ANCHORS_PER_DAY_FREE", "LUCID_ANCHORS_PER_DAY_PREMIUM", "LUCID_ANCHORS_PER_DAY_ENTERPRISE"},
	},
	{
		Name:      "blocks",
		Summary:   "block manager: verifies and indexes blocks, serves queries and proofs",
		Container: "lucid-block-manager",
		Port:      8086,
		DependsOn: []string{"engine"},
		Calls:     []string{"engine"},
		Env:       []string{"BLOCKCHAIN_ENGINE_URL", "LUCID_CHAIN_ID", "LUCID_VALIDATOR_KEYS", "LUCID_AUDITS_MAX"},
	},
	{
		Name:            "datachain",
		Summary:         "data chain: content-addressed chunk store, session Merkle trees",
		Container:       "lucid-data-chain",
		Port:            8087,
		DependsOn:       []string{"anchoring"},
		Calls:           []string{"anchoring"},
		PassesPrincipal: true,
		Env: []string{"ENCRYPTION_KEY", keyring.EncryptionPrevious, "LUCID_ANCHORING_URL", "LUCID_CHUNK_MIN_BYTES", "LUCID_CHUNK_MAX_BYTES",
			"LUCID_SCRUB_INTERVAL", "LUCID_PACK_MAX_BYTES", "LUCID_SESSION_MAX_CHUNKS", "LUCID_DISK_RESERVE_BYTES",
			"LUCID_QUOTA_FREE_BYTES", "LUCID_QUOTA_PREMIUM_BYTES", "LUCID_QUOTA_ENTERPRISE_BYTES"},
	},
	{
		Name:      "gateway",
		Summary:   "API gateway: routing, JWT auth, rate limits, the only public door",
		Container: "lucid-api-gateway",
		Port:      8080,
		After:     []string{"engine", "anchoring", "blocks", "datachain"},
		Secrets:   []string{"JWT_SECRET_KEY"},
		Env: append([]string{"JWT_SECRET_KEY", keyring.JWTPrevious, "LUCID_GATEWAY_ROUTES", "AUTH_SERVICE_URL", "LUCID_RATE_FREE", "LUCID_RATE_PREMIUM",
			"LUCID_RATE_ENTERPRISE", "LUCID_RATE_BURST_DIVISOR", "LUCID_RATE_LIMIT_ON_ERROR", "LUCID_TRUSTED_PROXIES",
			"LUCID_CORS_ORIGINS", "REDIS_URL", "CONSUL_HOST", "CONSUL_PORT", "CONSUL_HTTP_TOKEN", "GOGC",
			"LUCID_JWT_ISSUER", "LUCID_JWT_AUDIENCE", "LUCID_RATE_UPLOAD_UNIT_BYTES",
			"LUCID_CONCURRENCY_FREE", "LUCID_CONCURRENCY_PREMIUM", "LUCID_CONCURRENCY_ENTERPRISE", "LUCID_CONNS_PER_ADDRESS", "LUCID_CONNS_MAX",
			"LUCID_TLS_CERT_FILE", "LUCID_TLS_KEY_FILE", "LUCID_ACME_DOMAINS", "LUCID_ACME_EMAIL", "LUCID_ACME_DIRECTORY",
			"LUCID_ACME_CA_ROOT", "LUCID_ACME_STORAGE", "LUCID_HTTP_ADDR", "LUCID_HTTPS_PORT", "LUCID_HSTS_MAX_AGE"}, urlKeys("engine", "anchoring", "blocks", "datachain")...),
		UsesConsul:      true,
		Public:          true,
		Calls:           []string{"engine", "anchoring", "blocks", "datachain"},
		PassesPrincipal: true,
	},
}

// MeshService is the mesh controller, which every service may call.
const MeshService = "mesh"

// GatewayService is the gateway, the only service users reach.
const GatewayService = "gateway"

// EngineService is the blockchain engine, the Raft voter of a host.
const EngineService = "engine"

// MayCall reports whether the allow list lets caller send requests to
// callee.
func MayCall(caller, callee string) bool {
	if callee == MeshService {
		_, known := Lookup(caller)
		return known
	}
	s, ok := Lookup(caller)
	return ok && slices.Contains(s.Calls, callee)
}

// MayActFor reports whether callee believes the principal caller passes
// on: caller acts for users and may call callee.
func MayActFor(caller, callee string) bool {
	s, ok := Lookup(caller)
	return ok && s.PassesPrincipal && MayCall(caller, callee)
}

// Callers lists the services that may call callee.
func Callers(callee string) []string {
	var out []string
	for _, s := range Services {
		if MayCall(s.Name, callee) {
			out = append(out, s.Name)
		}
	}
	return out
}

// Scheme is the URL scheme other programs reach s with: https when the
// mesh's mTLS is on, except for a public service.
func (s Service) Scheme(mtls bool) string {
	if mtls && !s.Public {
		return "https"
	}
	return "http"
}

// Lookup returns the service called name.
func Lookup(name string) (Service, bool) {
	i := slices.IndexFunc(Services, func(s Service) bool { return s.Name == name })
	if i < 0 {
		return Service{}, false
	}
	return Services[i], true
}

// Names returns the service names in start order.
func Names() []string {
	names := make([]string, len(Services))
	for i, s := range Services {
		names[i] = s.Name
	}
	return names
}

// Closure returns the named services together with everything they need
// to start (DependsOn, transitively, not After), in start order. It fails
// on an unknown name.
func Closure(names []string) ([]Service, error) {
	want := map[string]bool{}
	var add func(string) error
	add = func(name string) error {
		s, ok := Lookup(name)
		if !ok {
			return fmt.Errorf("unknown service %q (services: %v)", name, Names())
		}
		if want[name] {
			return nil
		}
		want[name] = true
		for _, d := range s.DependsOn {
			if err := add(d); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		if err := add(n); err != nil {
			return nil, err
		}
	}
	var out []Service
	for _, s := range Services {
		if want[s.Name] {
			out = append(out, s)
		}
	}
	return out, nil
}
