package hostservices

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/meshtls"
)

// The chain's voters are changed through the engine's voter API on the
// leader's host, as the operator: what `lucidctl maintenance voters` and a
// cluster deploy (joining a host, removing a voter) both do with these.

// Engine is a client of the engine of the session's host, whose requests
// carry the operator token. timeout 0 leaves each request to its context.
func (s *Session) Engine(ctx context.Context, timeout time.Duration) (*engineapi.Client, error) {
	hc, base, err := s.Client(ctx, "engine", timeout)
	if err != nil {
		return nil, err
	}
	return engineapi.New(base, hc), nil
}

// AddVoter seals the node's validator key into the chain (a system
// transaction), then adds the node as a Raft voter at its address, through
// the engine of the session's host, which must lead (NotLeader tells its
// refusal). Sealing waits for a block, so timeout must allow a few block
// intervals.
func (s *Session) AddVoter(ctx context.Context, timeout time.Duration, req engineapi.AddVoterRequest) error {
	eng, err := s.Engine(ctx, timeout)
	if err != nil {
		return err
	}
	return eng.AddVoter(ctx, s.EngineOperator(), req)
}

// RemoveVoter removes the node from the Raft voters through the engine of
// the session's host, which must lead; with key, the removal of its
// validator key is sealed into the chain first. The engine refuses to
// remove its own key or the last validator. The answer is the leader's
// consensus status afterwards.
func (s *Session) RemoveVoter(ctx context.Context, timeout time.Duration, id, key string) (*engineapi.ConsensusStatus, error) {
	eng, err := s.Engine(ctx, timeout)
	if err != nil {
		return nil, err
	}
	return eng.RemoveVoter(ctx, s.EngineOperator(), id, key)
}

// The audit trail's actions of voter changes, the same whichever command
// made them.
const (
	AuditVoterAdd    = "chain.voters.add"
	AuditVoterRemove = "chain.voters.remove"
)

// VoterAddAudit is what a host's audit trail records of adding req as a
// voter: the node, its Raft address and its validator key (a public key,
// no secret).
func VoterAddAudit(req engineapi.AddVoterRequest) []string {
	return []string{AuditVoterAdd, req.ID, "--address", req.Address, "--key", req.Key}
}

// VoterRemoveAudit is what a host's audit trail records of removing node
// id from the voters, and with key its validator key.
func VoterRemoveAudit(id, key string) []string {
	if key == "" {
		return []string{AuditVoterRemove, id}
	}
	return []string{AuditVoterRemove, id, "--key", key}
}

// NotLeader reports whether err is an engine's refusal to change the
// voters because it does not lead.
func NotLeader(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Code == engineapi.CodeNotLeader
}

// Unfinished reports whether err is an engine's answer that a change of
// the voters was not made but may pass if made again, through whichever
// engine leads then: it does not lead (any more), or its consensus did
// not finish the change in time. Both changes are safe to make twice.
func Unfinished(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && (ae.Code == engineapi.CodeNotLeader || ae.Code == engineapi.CodeConsensus)
}

// ProbeRaft checks, from the session's host, the Raft transport of an
// engine at addr before the host's engine is made to depend on it as a
// voter: addr must take a TCP connection from the host, and with the mesh
// on present an engine certificate of the mesh's CA (verified against the
// bundle the session authenticated). It sends nothing but a TLS handshake
// without a client certificate, which the engine refuses; so it does not
// prove that the engine there takes this one's chain, only that the two
// can reach and verify each other.
func (s *Session) ProbeRaft(ctx context.Context, addr string) error {
	if err := s.Secure(ctx); err != nil {
		return err
	}
	conn, err := s.Dial(addr)
	if err != nil {
		return fmt.Errorf("%s cannot reach %s: %w", s.Host, addr, err)
	}
	defer conn.Close()
	s.mu.Lock()
	on, bundle := s.tls, s.bundle
	s.mu.Unlock()
	if !on {
		return nil // plain Raft, as the host's own engine speaks it
	}
	tc := meshtls.VerifyServerTLS(bundle, "engine")
	var verified atomic.Bool
	check := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := check(cs); err != nil {
			return err
		}
		verified.Store(true)
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err = tls.Client(conn, tc).HandshakeContext(hctx)
	switch {
	case verified.Load():
		return nil // its refusal of a caller without a certificate is expected
	case err == nil:
		err = errors.New("no certificate was verified")
	}
	return fmt.Errorf("%s does not answer %s as an engine of its mesh: %w", addr, s.Host, err)
}
