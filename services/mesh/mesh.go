// Package mesh is the service mesh controller (`lucid mesh`, port 8088):
// Consul registration, the mesh CA that issues mTLS certificates, and Envoy
// bootstrap configs.
//
// So far it serves only the shared endpoints (/health, /ready, /metrics).
package mesh

import "github.com/pickme/lucid/pkg/service"

// New returns the mesh service.
func New() service.App { return service.Basic{} }
