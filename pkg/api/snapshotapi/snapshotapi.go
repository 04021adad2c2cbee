// Package snapshotapi is the wire contract of online backups: every
// stateful service (engine, anchoring, blocks, data chain, mesh) can take a
// consistent copy of its state while it keeps serving, describe it as a
// manifest of files cut into content-addressed pieces, serve any byte range
// of those files, and drop the copy. lucidctl's backup reads the manifest,
// fetches only the pieces its repository does not hold yet, and deletes
// the copy.
//
// The endpoints, on each stateful service's own port and for the operator
// credential only:
//
//	POST   /api/v1/snapshots                            201, a Manifest
//	GET    /api/v1/snapshots/{id}/files/{path...}?offset=N&length=M
//	                                                    200, those bytes of the file
//	DELETE /api/v1/snapshots/{id}                       204
//
// A copy lives under the service's data directory in SnapshotDir until it
// is deleted; the service removes copies unread for MaxAge by itself, so a
// backup that died halfway costs disk only for that long.
package snapshotapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api"
)

// PieceSize is the size of every piece of a file but its last. Pieces sit
// at fixed offsets, so an append-only file that grew keeps all its earlier
// pieces (but the last partial one), and a bbolt file that changed a few
// pages changes only the pieces holding them.
const PieceSize = 1 << 20

// SnapshotDir is where, under a service's data directory, its copies are
// taken. A restore never writes it, and a backup never includes it.
const SnapshotDir = ".snapshots"

// MaxAge is how long a service keeps a copy nobody deleted, from when it
// was taken or last read.
const MaxAge = time.Hour

// Manifest describes one service's consistent copy.
type Manifest struct {
	// ID names the copy on the service (for the file and delete calls).
	ID      string    `json:"id"`
	Service string    `json:"service"`
	TakenAt time.Time `json:"taken_at"`
	// Version is the lucid version that took the copy.
	Version   string `json:"version,omitempty"`
	PieceSize int64  `json:"piece_size"`
	// Files are relative to the service's data directory, slash-separated,
	// sorted by path.
	Files []File `json:"files"`
	// Facts are what the copy holds, as the service counted it at the
	// moment of the copy.
	Facts Facts `json:"facts"`
}

// File is one file of a copy.
type File struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Mode is the file's permission bits (0o600 for every database).
	Mode uint32 `json:"mode"`
	// SHA256 is the hex SHA-256 of the whole file as copied.
	SHA256 string `json:"sha256"`
	// Pieces are the hex SHA-256 of each PieceSize piece, in order.
	Pieces []string `json:"pieces"`
}

// Facts are a copy's figures, one section per service; a service fills
// its own.
type Facts struct {
	Chain     *ChainFacts     `json:"chain,omitempty"`
	Anchoring *AnchoringFacts `json:"anchoring,omitempty"`
	Blocks    *BlocksFacts    `json:"blocks,omitempty"`
	DataChain *DataChainFacts `json:"datachain,omitempty"`
	Mesh      *MeshFacts      `json:"mesh,omitempty"`
}

// ChainFacts are the engine's chain at the copy.
type ChainFacts struct {
	ChainID  string `json:"chain_id"`
	Height   uint64 `json:"height"`
	TreeSize uint64 `json:"tree_size"`
	// Root is the base64 tree root of the block at Height, as in its
	// checkpoint.
	Root string `json:"root"`
	// ValidatorKey is the engine's note verifier key.
	ValidatorKey string `json:"validator_key"`
	// SignedHeight is the highest height the signing guard holds.
	SignedHeight uint64 `json:"signed_height"`
}

// AnchoringFacts are the anchoring queue at the copy.
type AnchoringFacts struct {
	Anchors int `json:"anchors"`
	Pending int `json:"pending"`
	Sealed  int `json:"sealed"`
}

// BlocksFacts are the block manager's index at the copy. The index can be
// rebuilt from the engine; it is backed up so that a restore serves
// queries at once.
type BlocksFacts struct {
	IndexedHeight uint64 `json:"indexed_height"`
}

// DataChainFacts are the chunk store at the copy.
type DataChainFacts struct {
	Chunks         int   `json:"chunks"`
	Sessions       int   `json:"sessions"`
	SealedSessions int   `json:"sealed_sessions"`
	Packs          int   `json:"packs"`
	PackBytes      int64 `json:"pack_bytes"`
}

// MeshFacts are the mesh CA at the copy.
type MeshFacts struct {
	// RootFingerprint is the hex SHA-256 of the CA root certificate.
	RootFingerprint string `json:"root_fingerprint"`
}

// Client talks to one service's snapshot endpoints.
type Client struct {
	base string
	http *http.Client
}

// New returns a client for the service at base.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Minute}
	}
	return &Client{base: strings.TrimRight(base, "/"), http: hc}
}

// Take asks the service for a consistent copy of its state.
func (c *Client) Take(ctx context.Context) (*Manifest, error) {
	var m Manifest
	if err := api.Do(ctx, c.http, api.Request{Method: http.MethodPost, URL: c.base + "/api/v1/snapshots"}, &m); err != nil {
		return nil, fmt.Errorf("take a snapshot: %w", err)
	}
	return &m, nil
}

// Read returns length bytes of path in copy id from offset. The caller
// closes the reader.
func (c *Client) Read(ctx context.Context, id, path string, offset, length int64) (io.ReadCloser, error) {
	u := c.base + "/api/v1/snapshots/" + url.PathEscape(id) + "/files/" + escapePath(path) +
		"?offset=" + strconv.FormatInt(offset, 10) + "&length=" + strconv.FormatInt(length, 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s of snapshot %s: %w", path, id, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, fmt.Errorf("read %s of snapshot %s: %w", path, id, api.DecodeError(resp))
	}
	return resp.Body, nil
}

// Drop deletes copy id on the service.
func (c *Client) Drop(ctx context.Context, id string) error {
	if err := api.Do(ctx, c.http, api.Request{Method: http.MethodDelete, URL: c.base + "/api/v1/snapshots/" + url.PathEscape(id)}, nil); err != nil {
		return fmt.Errorf("drop snapshot %s: %w", id, err)
	}
	return nil
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}
