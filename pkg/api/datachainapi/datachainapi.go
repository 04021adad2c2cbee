// Package datachainapi is the typed HTTP client of the data chain: storing
// chunks into sessions and sealing them, and the operator's maintenance
// (scrub, compaction, the store's status).
package datachainapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/packstore"
)

// Client talks to the data chain.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for the data chain at base.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 2 * time.Minute}
	}
	return &Client{base: strings.TrimRight(base, "/"), http: hc}
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, ctype string, out any) error {
	if err := api.Do(ctx, c.http, api.Request{Method: method, URL: c.base + path, Body: body, ContentType: ctype}, out); err != nil {
		return fmt.Errorf("data chain: %w", err)
	}
	return nil
}

// Stored answers a PutChunk.
type Stored struct {
	ID   string `json:"id"`
	Size int    `json:"size"`
}

// PutChunk stores data at index of session.
func (c *Client) PutChunk(ctx context.Context, session string, index uint64, data []byte) (*Stored, error) {
	var out Stored
	path := "/api/v1/chunks?session_id=" + url.QueryEscape(session) + "&index=" + strconv.FormatUint(index, 10)
	return &out, c.do(ctx, http.MethodPut, path, data, "application/octet-stream", &out)
}

// SealRequest is what sealing needs beyond the chunks.
type SealRequest struct {
	Owner        string `json:"owner"`
	ManifestHash string `json:"manifest_hash"`
	StartedAt    string `json:"started_at"`
	EndedAt      string `json:"ended_at"`
}

// Sealed answers a Seal.
type Sealed struct {
	SessionID  string                     `json:"session_id"`
	Root       string                     `json:"merkle_root"`
	ChunkCount int                        `json:"chunk_count"`
	Anchor     *anchoringapi.AnchorStatus `json:"anchor"`
}

// Seal freezes a session and anchors its root.
func (c *Client) Seal(ctx context.Context, session string, req SealRequest) (*Sealed, error) {
	body, _ := json.Marshal(req)
	var out Sealed
	return &out, c.do(ctx, http.MethodPost, "/api/v1/sessions/"+url.PathEscape(session)+"/seal", body, "application/json", &out)
}

// Status answers GET /api/v1/status (the operator's): the store's counts
// and the last scrub's report, if one ran since the service started.
type Status struct {
	packstore.Stats
	LastScrub *packstore.ScrubReport `json:"last_scrub"`
	// Keys counts the live records by the key that sealed them, current
	// key first (empty for a plain store): a previous key with no records
	// left can be dropped from ENCRYPTION_PREVIOUS_KEYS.
	Keys []packstore.KeyRecords `json:"keys"`
}

// Status returns the store's status. The client's transport must carry
// the operator credential (api.WithBearer).
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var out Status
	return &out, c.do(ctx, http.MethodGet, "/api/v1/status", nil, "", &out)
}

// Scrub re-reads and checks every chunk now and returns what it found
// (the operator's). It answers when the scrub is over.
func (c *Client) Scrub(ctx context.Context) (*packstore.ScrubReport, error) {
	var out packstore.ScrubReport
	return &out, c.do(ctx, http.MethodPost, "/api/v1/verify", nil, "", &out)
}

// Compact rewrites the packs that are mostly deleted chunks now and
// returns what was reclaimed (the operator's).
func (c *Client) Compact(ctx context.Context) (*packstore.CompactReport, error) {
	var out packstore.CompactReport
	return &out, c.do(ctx, http.MethodPost, "/api/v1/compact", nil, "", &out)
}
