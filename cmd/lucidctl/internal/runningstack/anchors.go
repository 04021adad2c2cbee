package runningstack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
)

// AnchorProbe submits test anchors through the gateway and checks each
// sealed one's receipt offline, against the chain's validator key: what
// validate phase2 does once and the anchoring benchmark does many times.
type AnchorProbe struct {
	anchors   *anchoringapi.Client
	verifiers note.Verifiers
	origin    string
}

// NewAnchorProbe reads the chain's identity through the gateway, calling
// with token.
func NewAnchorProbe(ctx context.Context, e *Endpoints, token string, timeout time.Duration) (*AnchorProbe, error) {
	hc := &http.Client{Timeout: timeout, Transport: api.WithBearer(e.Transport(false), token)}
	info, err := engineapi.New(e.Gateway+"/blockchain", hc).Chain(ctx)
	if err != nil {
		return nil, fmt.Errorf("chain info: %w", err)
	}
	vs, err := chain.Verifiers([]string{info.ValidatorKey})
	if err != nil {
		return nil, err
	}
	return &AnchorProbe{anchors: anchoringapi.New(e.Gateway, hc), verifiers: vs, origin: chain.Origin(info.ChainID)}, nil
}

// TestAnchor is a made-up session of one chunk. It names no owner: the
// anchor is the token's subject's.
func TestAnchor(sessionID string) *chain.SessionAnchor {
	sum := sha256.Sum256([]byte(sessionID))
	return &chain.SessionAnchor{SessionID: sessionID, ManifestHash: hex.EncodeToString(sum[:]), MerkleRoot: hex.EncodeToString(sum[:]),
		ChunkCount: 1, StartedAt: "2026-01-01T00:00:00Z", EndedAt: "2026-01-01T00:10:00Z"}
}

// Submit sends m through the gateway.
func (p *AnchorProbe) Submit(ctx context.Context, m *chain.SessionAnchor) error {
	_, err := p.anchors.Anchor(ctx, m)
	return err
}

// errNotSealed says an anchor is not in a block yet; Cause, if any, is why
// its status could not be read.
type errNotSealed struct{ cause error }

func (e *errNotSealed) Error() string {
	if e.cause != nil {
		return "not sealed yet: " + e.cause.Error()
	}
	return "not sealed yet"
}

// Check returns m's status once it is sealed and its receipt proves m;
// *errNotSealed while it is not, any other error when the receipt is wrong.
func (p *AnchorProbe) Check(ctx context.Context, m *chain.SessionAnchor) (*anchoringapi.AnchorStatus, error) {
	st, err := p.anchors.Get(ctx, m.SessionID)
	var ae *api.Error
	switch {
	case errors.As(err, &ae) && ae.Status < 500 && ae.Status != http.StatusTooManyRequests && ae.Status != http.StatusNotFound:
		// Refused (a bad token, say): waiting will not change it.
		return nil, fmt.Errorf("status of %s: %w", m.SessionID, err)
	case err != nil:
		return nil, &errNotSealed{err}
	}
	switch st.Status {
	case anchoringapi.StatusSealed:
	case anchoringapi.StatusRefused:
		return nil, fmt.Errorf("the chain refused the anchor of %s: %s", m.SessionID, st.Reason)
	default:
		return nil, &errNotSealed{}
	}
	v, err := chain.VerifyReceipt([]byte(st.Receipt), p.verifiers, p.origin)
	if err != nil {
		return nil, fmt.Errorf("the receipt of %s does not verify: %w", m.SessionID, err)
	}
	if v.Tx.Anchor == nil || v.Tx.Anchor.SessionID != m.SessionID || v.Tx.Anchor.ManifestHash != m.ManifestHash {
		return nil, fmt.Errorf("the receipt given for %s proves another transaction than the one submitted", m.SessionID)
	}
	return st, nil
}

// WaitSealed checks every anchor until each is sealed and its receipt
// verified, calling sealed for each, or until within has passed. Sweeps
// are paced at about 100 lookups a second, inside any tier's budget.
func (p *AnchorProbe) WaitSealed(ctx context.Context, anchors []*chain.SessionAnchor, within time.Duration, sealed func(*chain.SessionAnchor, *anchoringapi.AnchorStatus)) error {
	deadline := time.Now().Add(within)
	pending := anchors
	for {
		var still []*chain.SessionAnchor
		var lastWait error // why the last pending anchor was not sealed yet
		for _, m := range pending {
			st, err := p.Check(ctx, m)
			if isNotSealed(err) {
				still, lastWait = append(still, m), err
				continue
			}
			if err != nil {
				return err
			}
			sealed(m, st)
		}
		pending = still
		switch {
		case len(pending) == 0:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("%d of %d anchors not sealed within %s (%w)", len(pending), len(anchors), within, lastWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(max(200*time.Millisecond, time.Duration(len(pending))*10*time.Millisecond)):
		}
	}
}

// isNotSealed reports whether err is check's "not yet".
func isNotSealed(err error) bool {
	var ns *errNotSealed
	return errors.As(err, &ns)
}
