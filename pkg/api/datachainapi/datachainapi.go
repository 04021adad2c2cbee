// Package datachainapi is the typed HTTP client of the data chain: storing
// chunks into sessions and sealing them.
package datachainapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api/anchoringapi"
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

// Error is an error answer.
type Error struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("data chain: %d %s: %s", e.Status, e.Code, e.Message)
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, ctype string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode >= 300 {
		var eb struct {
			Error Error `json:"error"`
		}
		_ = json.Unmarshal(data, &eb)
		eb.Error.Status = resp.StatusCode
		if eb.Error.Message == "" {
			eb.Error.Message = strings.TrimSpace(string(data))
		}
		return &eb.Error
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
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
	return &out, c.do(ctx, http.MethodPut, path, bytes.NewReader(data), "application/octet-stream", &out)
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
	return &out, c.do(ctx, http.MethodPost, "/api/v1/sessions/"+url.PathEscape(session)+"/seal", bytes.NewReader(body), "application/json", &out)
}
