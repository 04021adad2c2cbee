package anchoring

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pickme/lucid/pkg/api/anchoringapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/service"
)

type api struct{ app *App }

// routes installs the API. An anchor belongs to the principal it was
// submitted for, and sessions are per owner: another principal's lookup of
// the same session id finds nothing, and its anchor of that id is its own.
// Checking a receipt needs no owner: a receipt proves itself.
func (a *api) routes(srv *service.Server) {
	srv.Handle("POST /api/v1/anchors", service.ForUser(a.create))
	srv.Handle("GET /api/v1/anchors/{session_id}", service.ForUser(a.get))
	srv.Handle("POST /api/v1/anchors/verify", a.verify)
}

// AnchorStatus is the answer about one anchor.
type AnchorStatus = anchoringapi.AnchorStatus

func (a *api) create(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	var m chain.SessionAnchor
	if err := service.DecodeJSON(w, r, 64<<10, &m); err != nil {
		return err
	}
	// The owner on the chain is who asks, never what the body says.
	switch m.Owner {
	case "", p.Subject:
		m.Owner = p.Subject
	default:
		fe := chain.FieldErrors{{Field: "owner", Message: "a session is anchored for its owner, the token's subject; leave owner out"}}
		he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "invalid manifest: %s", fe.Error())
		he.Fields = fe
		return he
	}
	tx := &chain.Transaction{Type: chain.TypeSessionAnchor, Anchor: &m}
	if err := m.ValidateNew(); err != nil {
		var fe chain.FieldErrors
		errors.As(err, &fe)
		he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "invalid manifest: %s", fe.Error())
		he.Fields = fe
		return he
	}
	canon, err := tx.Encode()
	if err != nil {
		return err
	}
	rec := &record{Owner: p.Subject, SessionID: m.SessionID, TxID: chain.TxID(canon), Tx: canon, Status: statusPending, CreatedAt: a.app.clock().UTC()}
	existing, created, err := a.app.store.accept(rec, a.app.perDay.Of(p.Tier))
	var daily *dailyLimitError
	switch {
	case errors.Is(err, errConflict):
		return service.Errorf(http.StatusConflict, service.CodeConflict, "session %s is already anchored with another manifest (transaction %s)", m.SessionID, existing.TxID)
	case errors.As(err, &daily):
		// Every anchor stays on the chain for good, on every Pi: a day's
		// are bounded per user, and the refusal says until when.
		a.app.overDaily.WithLabelValues(string(p.Tier)).Inc()
		midnight := rec.CreatedAt.Truncate(24 * time.Hour).Add(24 * time.Hour)
		w.Header().Set("Retry-After", strconv.Itoa(int(midnight.Sub(rec.CreatedAt).Seconds())+1))
		return service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit,
			"%d new anchors a day is what your tier may submit here, and today's are used; submit again after %s (the same anchor again is always answered)", daily.limit, midnight.Format(time.RFC3339))
	}
	if err != nil {
		return err
	}
	if created {
		a.app.accepted.Inc()
		a.app.poke()
	} else {
		rec = existing
	}
	service.WriteJSON(w, http.StatusAccepted, a.status(rec))
	return nil
}

func (a *api) status(rec *record) AnchorStatus {
	st := AnchorStatus{SessionID: rec.SessionID, TxID: rec.TxID, Status: string(rec.Status), Code: rec.Code, Reason: rec.Reason}
	if rec.Status == statusSealed {
		idx := rec.Index
		st.Height, st.Index = rec.Height, &idx
		a.app.mu.Lock()
		if a.app.head >= rec.Height {
			st.Confirmations = a.app.head - rec.Height + 1
		}
		a.app.mu.Unlock()
	}
	return st
}

func (a *api) get(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	sid := r.PathValue("session_id")
	if _, err := uuid.Parse(sid); err != nil {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "session_id must be a UUID")
	}
	rec, err := a.app.store.get(p.Subject, sid)
	if err != nil {
		return err
	}
	if rec == nil {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no anchor for session %s", sid)
	}
	st := a.status(rec)
	if rec.Status == statusSealed {
		// The engine builds receipts from its chain store on demand; the
		// queue need not keep a copy.
		receipt, err := a.app.engine.Receipt(r.Context(), rec.TxID)
		if err != nil {
			a.app.logger.WarnContext(r.Context(), "receipt not available", "tx", rec.TxID, "error", err)
		}
		st.Receipt = string(receipt)
	}
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

// VerifyResult answers POST /api/v1/anchors/verify.
type VerifyResult struct {
	Valid     bool   `json:"valid"`
	Reason    string `json:"reason,omitempty"`
	TxID      string `json:"tx_id,omitempty"`
	SessionID string `json:"session_id,omitempty"`
	Height    uint64 `json:"height,omitempty"`
}

// verify checks a receipt (the tlog-proof text as the body) against the
// chain's validators.
func (a *api) verify(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 256<<10))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "a receipt is at most 256 KiB")
	case err != nil:
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "reading the body: %v", err)
	}
	if !strings.HasPrefix(string(body), "c2sp.org/tlog-proof@v1\n") {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the body must be a receipt (c2sp.org/tlog-proof@v1)")
	}
	v, err := a.app.verifyReceipt(r.Context(), body)
	if err != nil {
		var unavailable *keysUnavailableError
		if errors.As(err, &unavailable) {
			// Anyone may ask: what the engine said, or where it is,
			// belongs in the log.
			he := service.Errorf(http.StatusServiceUnavailable, service.CodeUnready, "the chain's validator keys are unavailable; try again")
			he.Cause = err
			return he
		}
		service.WriteJSON(w, http.StatusOK, VerifyResult{Valid: false, Reason: err.Error()})
		return nil
	}
	res := VerifyResult{Valid: true, TxID: v.TxID, Height: v.Header.Height}
	if v.Tx.Anchor != nil {
		res.SessionID = v.Tx.Anchor.SessionID
	}
	service.WriteJSON(w, http.StatusOK, res)
	return nil
}
