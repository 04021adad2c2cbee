// Package anchoringapi is the typed HTTP client of session anchoring and
// the JSON shapes of its API.
package anchoringapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/chain"
)

// Anchor statuses: pending until the chain seals the anchor or the engine
// refuses it (Code and Reason then say why); both are final.
const (
	StatusPending = "pending"
	StatusSealed  = "sealed"
	StatusRefused = "refused"
)

// AnchorStatus is the answer about one anchor.
type AnchorStatus struct {
	SessionID     string  `json:"session_id"`
	TxID          string  `json:"tx_id"`
	Status        string  `json:"status"`
	Code          string  `json:"code,omitempty"`
	Reason        string  `json:"reason,omitempty"`
	Height        uint64  `json:"height,omitempty"`
	Index         *uint64 `json:"index,omitempty"`
	Confirmations uint64  `json:"confirmations,omitempty"`
	Receipt       string  `json:"receipt,omitempty"`
}

// Client talks to session anchoring.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for the anchoring service at base.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(base, "/"), http: hc}
}

func (c *Client) do(ctx context.Context, method, path string, body []byte) (*AnchorStatus, error) {
	var st AnchorStatus
	if err := api.Do(ctx, c.http, api.Request{Method: method, URL: c.base + path, Body: body}, &st); err != nil {
		return nil, fmt.Errorf("anchoring: %w", err)
	}
	return &st, nil
}

// Anchor submits a session manifest; the answer comes once it is durably
// queued.
func (c *Client) Anchor(ctx context.Context, m *chain.SessionAnchor) (*AnchorStatus, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, http.MethodPost, "/api/v1/anchors", body)
}

// Get returns a session's anchor status (and receipt once sealed).
func (c *Client) Get(ctx context.Context, sessionID string) (*AnchorStatus, error) {
	return c.do(ctx, http.MethodGet, "/api/v1/anchors/"+url.PathEscape(sessionID), nil)
}
