// Package datachain is the data chain (`lucid datachain`, port 8087): a
// content-addressed chunk store with per-session Merkle trees that seals a
// session by anchoring its root.
//
// So far it serves only the shared endpoints (/health, /ready, /metrics).
package datachain

import "github.com/pickme/lucid/pkg/service"

// New returns the datachain service.
func New() service.App { return service.Basic{} }
