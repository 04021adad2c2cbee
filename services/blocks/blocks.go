// Package blocks is the block manager (`lucid blocks`, port 8086): it
// follows the engine, re-verifies every block, indexes it and serves queries,
// proofs and chain audits.
//
// So far it serves only the shared endpoints (/health, /ready, /metrics).
package blocks

import "github.com/pickme/lucid/pkg/service"

// New returns the blocks service.
func New() service.App { return service.Basic{} }
