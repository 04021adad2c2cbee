package blocks

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chainstore"
	"github.com/pickme/lucid/pkg/chainstore/storehttp"
	"github.com/pickme/lucid/pkg/service"
)

type api struct{ app *App }

func (a *api) routes(srv *service.Server) {
	srv.Handle("GET /api/v1/blocks", a.list)
	store := storehttp.Handlers{Store: a.app.store}
	store.Register(srv)
	srv.Handle("GET /api/v1/chain/status", a.status)
	srv.Handle("GET /api/v1/chain/transactions/{id}", a.tx)
	srv.Handle("GET /api/v1/chain/anchors/{session_id}", a.anchor)
	srv.Handle("GET /api/v1/chain/proofs/{id}", store.Receipt)
	srv.Handle("GET /api/v1/chain/verify", a.verify)
}

// BlockSummary is a block without its transactions.
type BlockSummary struct {
	Height   uint64    `json:"height"`
	Hash     string    `json:"hash"`
	Prev     string    `json:"prev"`
	Time     time.Time `json:"time"`
	TxCount  int       `json:"tx_count"`
	TreeSize uint64    `json:"tree_size"`
	Proposer string    `json:"proposer"`
}

// BlockPage answers GET /api/v1/blocks.
type BlockPage struct {
	Blocks []BlockSummary `json:"blocks"`
	// Next is the ?to= of the next (older) page; absent on the last.
	Next *uint64 `json:"next,omitempty"`
}

const maxPage = 100

// list pages through blocks, newest first: ?to= (default: the head) and
// ?limit= (default 20, at most 100); ?from= bounds the range below.
func (a *api) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	head := a.app.store.Height()
	num := func(key string, def uint64) (uint64, error) {
		v := q.Get(key)
		if v == "" {
			return def, nil
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "%s must be a whole number", key)
		}
		return n, nil
	}
	to, err := num("to", head)
	if err != nil {
		return err
	}
	from, err := num("from", 1)
	if err != nil {
		return err
	}
	limit, err := num("limit", 20)
	if err != nil {
		return err
	}
	if limit == 0 || limit > maxPage {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "limit must be 1..%d", maxPage)
	}
	to = min(to, head)
	from = max(from, 1)
	page := BlockPage{Blocks: []BlockSummary{}}
	if to >= from {
		lo := from
		if to-from+1 > limit {
			lo = to - limit + 1
		}
		// From the checkpoints alone: a summary is a header's, and
		// decoding up to 100 whole blocks for it would cost seconds.
		err := a.app.store.Headers(lo, to, func(h *chain.Header) error {
			page.Blocks = append(page.Blocks, BlockSummary{h.Height, h.Hash(), h.Prev, h.Time, h.TxCount, h.TreeSize, h.Proposer})
			return nil
		})
		if err != nil {
			return err
		}
		// Newest first.
		for i, j := 0, len(page.Blocks)-1; i < j; i, j = i+1, j-1 {
			page.Blocks[i], page.Blocks[j] = page.Blocks[j], page.Blocks[i]
		}
		if lo > from {
			next := lo - 1
			page.Next = &next
		}
	}
	service.WriteJSON(w, http.StatusOK, page)
	return nil
}

// Status answers GET /api/v1/chain/status.
type Status struct {
	Height     uint64     `json:"height"`
	HeadHash   string     `json:"head_hash,omitempty"`
	Validators []string   `json:"validators"`
	Rejected   *Rejection `json:"rejected,omitempty"`
	LastError  string     `json:"last_error,omitempty"`
}

func (a *api) status(w http.ResponseWriter, _ *http.Request) error {
	st := Status{Height: a.app.store.Height(), Validators: a.app.store.Validators(), Rejected: a.app.rejection()}
	if h := a.app.store.Head(); h != nil {
		st.HeadHash = h.Hash()
	}
	a.app.mu.Lock()
	st.LastError = a.app.lastErr
	a.app.mu.Unlock()
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

// TxInfo answers the transaction and anchor lookups.
type TxInfo struct {
	ID          string          `json:"id"`
	Height      uint64          `json:"height"`
	Index       uint64          `json:"index"`
	Transaction json.RawMessage `json:"transaction"`
}

func (a *api) txInfo(id string) (*TxInfo, error) {
	rc, err := a.app.store.Receipt(id)
	if errors.Is(err, chainstore.ErrNotFound) {
		return nil, service.Errorf(http.StatusNotFound, service.CodeNotFound, "no verified transaction %s", id)
	}
	if err != nil {
		return nil, err
	}
	loc, err := a.app.store.Tx(id)
	if err != nil {
		return nil, err
	}
	return &TxInfo{ID: id, Height: loc.Height, Index: loc.Index, Transaction: rc.Tx}, nil
}

func (a *api) tx(w http.ResponseWriter, r *http.Request) error {
	info, err := a.txInfo(r.PathValue("id"))
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, info)
	return nil
}

// anchor looks up the anchor of one of the principal's sessions (sessions
// are per owner), or, for the operator, of the owner named by ?owner=.
func (a *api) anchor(w http.ResponseWriter, r *http.Request) error {
	owner, err := service.OwnerOf(r)
	if err != nil {
		return err
	}
	id, err := a.app.store.SessionTx(owner, r.PathValue("session_id"))
	if errors.Is(err, chainstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no anchor for session %s in the verified chain", r.PathValue("session_id"))
	}
	if err != nil {
		return err
	}
	info, err := a.txInfo(id)
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, info)
	return nil
}

// AuditProgress is one line of GET /api/v1/chain/verify.
type AuditProgress struct {
	Done         bool    `json:"done"`
	OK           bool    `json:"ok"`
	Height       uint64  `json:"height"`
	Blocks       uint64  `json:"blocks"`
	Transactions uint64  `json:"transactions"`
	Reason       string  `json:"reason,omitempty"`
	DurationMS   float64 `json:"duration_ms,omitempty"`
}

// auditWriteTimeout bounds each progress write of an audit.
const auditWriteTimeout = 30 * time.Second

// verify re-verifies every stored block from the first, streaming a
// progress line every 1,000 blocks and a final verdict (NDJSON).
func (a *api) verify(w http.ResponseWriter, r *http.Request) error {
	// Each audit reads every block from the disk, a core's work for a
	// while: a user runs one at a time, and all users together at most
	// LUCID_AUDITS_MAX.
	release, err := a.app.audits.Acquire(r.Context())
	if err != nil {
		return err
	}
	defer release()
	w.Header().Set("Content-Type", "application/x-ndjson")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	start := time.Now()
	vs := a.app.validators
	auditor := chain.NewAuditor(chain.Origin(a.app.chainID), vs)
	var blocks uint64
	to := a.app.store.Height()
	err = func() error {
		for next := uint64(1); next <= to; {
			if err := r.Context().Err(); err != nil {
				return err
			}
			batch, err := a.app.store.BlockRange(next, to, 8<<20)
			if err != nil {
				return err
			}
			for _, raw := range batch {
				b, err := chain.DecodeBlock(raw)
				if err != nil {
					return &chain.BlockError{Height: next, Reason: err.Error()}
				}
				if err := auditor.Next(b); err != nil {
					return err
				}
				blocks++
				next++
				if blocks%1000 == 0 {
					// A reader that stopped reading is cut off rather
					// than holding its slot for good.
					_ = rc.SetWriteDeadline(time.Now().Add(auditWriteTimeout))
					if err := enc.Encode(AuditProgress{Height: b.Height, Blocks: blocks, Transactions: auditor.Txs}); err != nil {
						return err
					}
					_ = rc.Flush()
				}
			}
		}
		return nil
	}()
	final := AuditProgress{Done: true, OK: err == nil, Blocks: blocks, Transactions: auditor.Txs,
		DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	if h := auditor.Head(); h != nil {
		final.Height = h.Height
	}
	if err != nil {
		final.Reason = err.Error()
	}
	return enc.Encode(final)
}
