// Package anchoring is session anchoring (`lucid anchoring`, port 8085): it
// accepts session manifests, submits anchor transactions to the engine,
// tracks them until sealed and serves receipts.
//
// So far it serves only the shared endpoints (/health, /ready, /metrics).
package anchoring

import "github.com/pickme/lucid/pkg/service"

// New returns the anchoring service.
func New() service.App { return service.Basic{} }
