// Package engineapi is the typed HTTP client of the blockchain engine, and
// the JSON shapes of its API, for the services and tools that talk to it
// (session anchoring, the block manager, lucidctl).
package engineapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/chain"
)

// Error codes the engine adds to the shared ones.
const (
	CodeNotLeader   = "LUCID_ERR_5101"
	CodeMempoolFull = "LUCID_ERR_5102"
	CodeConsensus   = "LUCID_ERR_5103"
)

// ReceiptContentType is the media type of a receipt.
const ReceiptContentType = "text/plain; charset=utf-8"

// Transaction statuses. Refused and deferred are answers to a submission
// only: a refused transaction will never be sealed (Code and Reason say
// why), a deferred one was not taken now and may be sent again.
const (
	StatusPending  = "pending"
	StatusSealed   = "sealed"
	StatusRefused  = "refused"
	StatusDeferred = "deferred"
)

// TxStatus is where a transaction is.
type TxStatus struct {
	// ID is empty for an item too malformed to have one.
	ID            string  `json:"id,omitempty"`
	Status        string  `json:"status"`
	Code          string  `json:"code,omitempty"`
	Reason        string  `json:"reason,omitempty"`
	Height        uint64  `json:"height,omitempty"`
	Index         *uint64 `json:"index,omitempty"`
	BlockHash     string  `json:"block_hash,omitempty"`
	Confirmations uint64  `json:"confirmations,omitempty"`
}

// SubmitResponse answers POST /api/v1/transactions.
type SubmitResponse struct {
	Transactions []TxStatus `json:"transactions"`
}

// ChainInfo answers GET /api/v1/chain.
type ChainInfo struct {
	ChainID      string    `json:"chain_id"`
	Origin       string    `json:"origin"`
	Height       uint64    `json:"height"`
	HeadHash     string    `json:"head_hash,omitempty"`
	HeadTime     time.Time `json:"head_time,omitzero"`
	TreeSize     uint64    `json:"tree_size"`
	Root         string    `json:"root"`
	Validators   []string  `json:"validators"`
	ValidatorKey string    `json:"validator_key"`
	// NodeID is the answering engine's Raft id; not told to users.
	NodeID        string `json:"node_id,omitempty"`
	Leader        bool   `json:"leader"`
	BlockInterval string `json:"block_interval"`
	// Fenced is true while the engine produces no block after a restore
	// (see Fence).
	Fenced bool `json:"fenced,omitempty"`
}

// ConsistencyProof answers GET /api/v1/consistency.
type ConsistencyProof struct {
	From  uint64   `json:"from"`
	To    uint64   `json:"to"`
	Proof []string `json:"proof"`
}

// Server is a Raft cluster member.
type Server struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
}

// ConsensusStatus answers GET /api/v1/consensus/status.
type ConsensusStatus struct {
	NodeID       string `json:"node_id"`
	State        string `json:"state"`
	LeaderID     string `json:"leader_id"`
	LeaderAddr   string `json:"leader_addr"`
	RaftAddr     string `json:"raft_addr"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// CommitIndex is the highest log index the node knows the cluster has
	// committed: a node with AppliedIndex at least CommitIndex and a known
	// leader has caught up. 0 before the node has heard of any commit
	// (and from engines too old to report it).
	CommitIndex  uint64   `json:"commit_index"`
	Height       uint64   `json:"height"`
	ValidatorKey string   `json:"validator_key"`
	Servers      []Server `json:"servers"`
}

// AddVoterRequest is the body of POST /api/v1/consensus/voters.
type AddVoterRequest struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Key     string `json:"key"`
}

// Error is an error answer of the engine.
type Error = api.Error

// ErrNotFound is matched by a 404 answer.
var ErrNotFound = api.ErrNotFound

// Client talks to the engine nodes of one chain. Given several URLs it
// sticks to the last one that answered, and moves on when a node is
// unreachable or is not the leader (for writes).
type Client struct {
	bases []string
	cur   atomic.Int32
	http  *http.Client
}

// New returns a client for the engine at base (http://host:port), or for
// several nodes given as a comma-separated list.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	c := &Client{http: hc}
	for _, b := range strings.Split(base, ",") {
		if b = strings.TrimRight(strings.TrimSpace(b), "/"); b != "" {
			c.bases = append(c.bases, b)
		}
	}
	if len(c.bases) == 0 {
		c.bases = []string{""}
	}
	return c
}

// URL is the base URL of the node in use.
func (c *Client) URL() string { return c.bases[int(c.cur.Load())%len(c.bases)] }

// retryElsewhere reports whether another node may answer where this one
// could not: it is down, or it is not the leader.
func retryElsewhere(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code == CodeNotLeader
	}
	return true // transport error
}

func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	return c.doAuth(ctx, method, path, "", body, out)
}

func (c *Client) doAuth(ctx context.Context, method, path, token string, body []byte, out any) error {
	var err error
	start := int(c.cur.Load())
	for i := range c.bases {
		idx := (start + i) % len(c.bases)
		if err = c.doOnce(ctx, c.bases[idx], method, path, token, body, out); err == nil || !retryElsewhere(ctx, err) {
			if err == nil {
				c.cur.Store(int32(idx))
			}
			return err
		}
	}
	return err
}

func (c *Client) doOnce(ctx context.Context, base, method, path, token string, body []byte, out any) error {
	return api.Do(ctx, c.http, api.Request{Method: method, URL: base + path, Body: body, Token: token}, out)
}

// Submit sends canonical transactions (at most 1000) and returns their
// statuses.
func (c *Client) Submit(ctx context.Context, txs [][]byte) (*SubmitResponse, error) {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, tx := range txs {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(tx)
	}
	buf.WriteByte(']')
	var out SubmitResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/transactions", buf.Bytes(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Tx returns a transaction's status.
func (c *Client) Tx(ctx context.Context, id string) (*TxStatus, error) {
	var out TxStatus
	if err := c.do(ctx, http.MethodGet, "/api/v1/transactions/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Receipt returns a sealed transaction's receipt (tlog-proof bytes).
func (c *Client) Receipt(ctx context.Context, id string) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, "/api/v1/transactions/"+url.PathEscape(id)+"/receipt", nil, &out)
	return out, err
}

// Chain returns the chain's head and validators.
func (c *Client) Chain(ctx context.Context) (*ChainInfo, error) {
	var out ChainInfo
	if err := c.do(ctx, http.MethodGet, "/api/v1/chain", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Block returns the block at height.
func (c *Client) Block(ctx context.Context, height uint64) (*chain.Block, error) {
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/api/v1/blocks/"+strconv.FormatUint(height, 10), nil, &raw); err != nil {
		return nil, err
	}
	return chain.DecodeBlock(raw)
}

// Checkpoint returns the signed checkpoint of the block at height: its
// header, without its transactions.
func (c *Client) Checkpoint(ctx context.Context, height uint64) ([]byte, error) {
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/api/v1/blocks/checkpoint/"+strconv.FormatUint(height, 10), nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// LatestBlock returns the newest block: the engine's, or a block
// manager's, which serves the same path.
func (c *Client) LatestBlock(ctx context.Context) (*chain.Block, error) {
	var raw []byte
	if err := c.do(ctx, http.MethodGet, "/api/v1/blocks/latest", nil, &raw); err != nil {
		return nil, err
	}
	return chain.DecodeBlock(raw)
}

// Consistency returns the proof that the log of size from is a prefix of
// the log of size to.
func (c *Client) Consistency(ctx context.Context, from, to uint64) ([][]byte, error) {
	var out ConsistencyProof
	path := "/api/v1/consistency?from=" + strconv.FormatUint(from, 10) + "&to=" + strconv.FormatUint(to, 10)
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	p := make([][]byte, len(out.Proof))
	for i, h := range out.Proof {
		b, err := base64.StdEncoding.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("consistency proof: %w", err)
		}
		p[i] = b
	}
	return p, nil
}

// Consensus returns the node's consensus status.
func (c *Client) Consensus(ctx context.Context) (*ConsensusStatus, error) {
	var out ConsensusStatus
	if err := c.do(ctx, http.MethodGet, "/api/v1/consensus/status", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AddVoter asks the leader to add a node; operatorToken is the operator's
// credential for the engine on the leader's host
// (auth.OperatorCredential(token, "engine", host); the engine holds its
// SHA-256, LUCID_OPERATOR_TOKEN_SHA256). Another host's engine refuses
// it, as it does the credential of any other host.
func (c *Client) AddVoter(ctx context.Context, operatorToken string, req AddVoterRequest) error {
	body, _ := json.Marshal(req)
	return c.doAuth(ctx, http.MethodPost, "/api/v1/consensus/voters", operatorToken, body, nil)
}

// Follow streams blocks from height from, calling fn for each in order,
// until ctx ends, fn fails, or the stream breaks (the error says which).
// Callers reconnect from the height after the last block they handled.
func (c *Client) Follow(ctx context.Context, from uint64, fn func(*chain.Block) error) error {
	// The engine writes a keep-alive line every 30 s; a stream silent for
	// much longer is a dead peer (power loss, partition), not a quiet one.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(FollowIdleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()
	// The stream is long-lived: no client timeout, only ctx.
	hc := *c.http
	hc.Timeout = 0
	var resp *http.Response
	var err error
	start := int(c.cur.Load())
	for i := range c.bases {
		idx := (start + i) % len(c.bases)
		req, rerr := http.NewRequestWithContext(ctx, http.MethodGet, c.bases[idx]+"/api/v1/blocks/stream?from="+strconv.FormatUint(from, 10), nil)
		if rerr != nil {
			return rerr
		}
		if resp, err = hc.Do(req); err == nil {
			c.cur.Store(int32(idx))
			break
		}
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return api.DecodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 512<<20)
	for sc.Scan() {
		idle.Reset(FollowIdleTimeout)
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue // keep-alive
		}
		b, err := chain.DecodeBlock(line)
		if err != nil {
			return fmt.Errorf("follow: %w", err)
		}
		if err := fn(b); err != nil {
			return err
		}
	}
	if cause := context.Cause(ctx); errors.Is(cause, errIdle) {
		return cause
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return io.ErrUnexpectedEOF
}

// FollowIdleTimeout is how long Follow waits for any line, keep-alives
// included, before it gives up on the stream.
var FollowIdleTimeout = 90 * time.Second

var errIdle = errors.New("follow: the stream was silent too long; reconnecting")

// RemoveVoter asks the leader to remove node id from the voters and, when
// key is set, its validator key from the chain; operatorToken is the
// operator's credential for the engine on its host, as for AddVoter. The
// answer is the consensus status afterwards.
func (c *Client) RemoveVoter(ctx context.Context, operatorToken, id, key string) (*ConsensusStatus, error) {
	path := "/api/v1/consensus/voters/" + url.PathEscape(id)
	if key != "" {
		path += "?key=" + url.QueryEscape(key)
	}
	var out ConsensusStatus
	if err := c.doAuth(ctx, http.MethodDelete, path, operatorToken, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// FenceFile is the file, in the engine's data directory, whose presence
// keeps the engine from producing blocks: a restore writes it, because the
// node it restores may have signed blocks after the backup that the
// restored copy does not hold. Only the operator lifts it (see Fence).
const FenceFile = "fence.json"

// Fence is the content of FenceFile.
type Fence struct {
	// Reason says why the engine is fenced ("restored").
	Reason string `json:"reason"`
	// Backup is the id of the backup that was restored.
	Backup string `json:"backup,omitempty"`
	// RestoredHeight is the chain height the restored copy holds.
	RestoredHeight uint64    `json:"restored_height"`
	At             time.Time `json:"at"`
}

// CodeFenced marks a lift refused because the fenced engine lacks heights
// the outside world knows.
const CodeFenced = "LUCID_ERR_5104"

// ForkNote records that the operator lifted a fence accepting a fork: the
// blocks the outside world may hold at heights From..To are void, and this
// chain holds other blocks there.
type ForkNote struct {
	From uint64    `json:"from"`
	To   uint64    `json:"to"`
	At   time.Time `json:"at"`
	// By names who accepted it, as lucidctl says (user@host).
	By string `json:"by,omitempty"`
	// Backup is the restored backup's id, from the fence.
	Backup string `json:"backup,omitempty"`
}

// FenceStatus answers GET /api/v1/fence and the fence's POST calls.
type FenceStatus struct {
	Fenced bool `json:"fenced"`
	// Fence is the fence file's content while fenced.
	Fence *Fence `json:"fence,omitempty"`
	// Height is the local chain's height.
	Height uint64 `json:"height"`
	// GuardedHeight is the highest height this node can produce again
	// exactly as it signed it before: its chain's height, plus the blocks
	// above it that its signing guard holds, linked to it.
	GuardedHeight uint64 `json:"guarded_height"`
	// Forks are the forks the operator accepted, oldest first.
	Forks []ForkNote `json:"forks,omitempty"`
}

// LiftFenceRequest is the body of POST /api/v1/fence/lift.
type LiftFenceRequest struct {
	// KnownHeight is the highest height the outside world knows (from the
	// newest receipt, or a block manager elsewhere). Required.
	KnownHeight *uint64 `json:"known_height"`
	// AcceptFork lifts the fence even though the node lacks heights up to
	// KnownHeight: those heights become void (a ForkNote records it).
	AcceptFork bool `json:"accept_fork,omitempty"`
	// By names who lifts it, for the fork note.
	By string `json:"by,omitempty"`
}

// ImportResult answers POST /api/v1/fence/blocks.
type ImportResult struct {
	Imported int         `json:"imported"`
	Status   FenceStatus `json:"status"`
}

// Fence returns the engine's fence, and the forks accepted; ErrNotFound
// when it is not fenced and no fork was ever accepted. operatorToken, here
// and in LiftFence and ImportBlocks, is the operator's credential for the
// engine on its host, as for AddVoter.
func (c *Client) Fence(ctx context.Context, operatorToken string) (*FenceStatus, error) {
	var out FenceStatus
	if err := c.doAuth(ctx, http.MethodGet, "/api/v1/fence", operatorToken, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// LiftFence asks the engine to lift its fence.
func (c *Client) LiftFence(ctx context.Context, operatorToken string, req LiftFenceRequest) (*FenceStatus, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out FenceStatus
	if err := c.doAuth(ctx, http.MethodPost, "/api/v1/fence/lift", operatorToken, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// MaxImportBytes bounds the body of one import call; ImportBlocks splits
// larger sets.
const MaxImportBytes = 48 << 20

// ImportBlocks sends a fenced engine the blocks above its height, in
// order, signed by its own key, as NDJSON; several calls when they are
// large. The result is the last call's.
func (c *Client) ImportBlocks(ctx context.Context, operatorToken string, blocks []*chain.Block) (*ImportResult, error) {
	total := &ImportResult{}
	for len(blocks) > 0 {
		var buf bytes.Buffer
		n := 0
		for n < len(blocks) {
			enc, err := blocks[n].Encode()
			if err != nil {
				return nil, err
			}
			if n > 0 && buf.Len()+len(enc)+1 > MaxImportBytes {
				break
			}
			buf.Write(enc)
			buf.WriteByte('\n')
			n++
		}
		var out ImportResult
		req := api.Request{Method: http.MethodPost, URL: c.URL() + "/api/v1/fence/blocks", Body: buf.Bytes(), ContentType: "application/x-ndjson", Token: operatorToken}
		if err := api.Do(ctx, c.http, req, &out); err != nil {
			return nil, err
		}
		total.Imported += out.Imported
		total.Status = out.Status
		blocks = blocks[n:]
	}
	return total, nil
}
