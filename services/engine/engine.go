// Package engine is the blockchain engine (`lucid engine`, port 8084): the
// mempool, block production on wall-clock slots, Raft consensus and the
// authoritative chain store.
//
// So far it serves only the shared endpoints (/health, /ready, /metrics); the
// chain itself is built on this skeleton.
package engine

import "github.com/pickme/lucid/pkg/service"

// New returns the engine service.
func New() service.App { return service.Basic{} }
