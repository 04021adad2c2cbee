package datachain

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	lucidapi "github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/packstore"
	"github.com/pickme/lucid/pkg/service"
)

// Error codes of the data chain.
const (
	CodeDamaged   = "LUCID_ERR_5201"
	CodeAnchoring = "LUCID_ERR_5202"
	CodeDiskFull  = "LUCID_ERR_5203"
	CodeQuota     = "LUCID_ERR_5204"
)

type api struct{ app *App }

// routes installs the API. Chunks and sessions belong to the principal
// that stored them and are answered only for it: another principal gets
// what it would get for something that does not exist. Scrub, compaction,
// the store's status and deleting any owner's chunk are the operator's.
func (a *api) routes(srv *service.Server) {
	srv.Handle("PUT /api/v1/chunks", service.ForUser(a.put))
	srv.Handle("GET /api/v1/chunks/{id}", service.ForUser(a.get))
	srv.Handle("HEAD /api/v1/chunks/{id}", service.ForUser(a.head))
	srv.Handle("DELETE /api/v1/chunks/{id}", a.delete)
	srv.Handle("GET /api/v1/sessions/{id}", service.ForUser(a.session))
	srv.Handle("GET /api/v1/sessions/{id}/proof/{index}", service.ForUser(a.proof))
	srv.Handle("POST /api/v1/sessions/{id}/seal", service.ForUser(a.seal))
	srv.Handle("POST /api/v1/verify", service.ForOperator(a.verify))
	srv.Handle("POST /api/v1/compact", service.ForOperator(a.compact))
	srv.Handle("GET /api/v1/status", service.ForOperator(a.status))
}

// ChunkStored answers PUT /api/v1/chunks.
type ChunkStored struct {
	ID        string  `json:"id"`
	Size      int     `json:"size"`
	SessionID string  `json:"session_id,omitempty"`
	Index     *uint64 `json:"index,omitempty"`
}

// put stores a chunk: the raw body, or the "chunk" part of a multipart
// form; session_id and index come from the query or the form.
func (a *api) put(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	release, err := a.app.putSlots.acquire(r.Context(), p.Subject)
	if err != nil {
		return err
	}
	defer release()
	limit := int64(a.app.maxChunk)
	if r.ContentLength > limit+64<<10 {
		return tooLarge(a.app.maxChunk)
	}
	var data []byte
	sid, idx := r.URL.Query().Get("session_id"), r.URL.Query().Get("index")
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		r.Body = http.MaxBytesReader(w, r.Body, limit+64<<10)
		if err := r.ParseMultipartForm(limit + 64<<10); err != nil {
			var tb *http.MaxBytesError
			if errors.As(err, &tb) {
				return tooLarge(a.app.maxChunk)
			}
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "malformed multipart form: %v", err)
		}
		// Removing the spooled temporary files is best effort: the request
		// is answered either way.
		defer func() { _ = r.MultipartForm.RemoveAll() }()
		f, _, err := r.FormFile("chunk")
		if err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the form has no \"chunk\" file")
		}
		defer func() { _ = f.Close() }() // only read: no data to lose
		if data, err = io.ReadAll(io.LimitReader(f, limit+1)); err != nil {
			return err
		}
		if v := r.FormValue("session_id"); v != "" {
			sid = v
		}
		if v := r.FormValue("index"); v != "" {
			idx = v
		}
	} else {
		buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 0), limit)+512))
		_, err = buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
		data = buf.Bytes()
		var tb *http.MaxBytesError
		if errors.As(err, &tb) {
			return tooLarge(a.app.maxChunk)
		}
		if err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "reading the body: %v", err)
		}
	}
	if len(data) > a.app.maxChunk {
		return tooLarge(a.app.maxChunk)
	}
	if len(data) < a.app.minChunk {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "chunk is %d bytes; at least %d are required", len(data), a.app.minChunk)
	}
	var member *packstore.Member
	out := ChunkStored{Size: len(data)}
	switch {
	case sid == "" && idx == "":
	case sid == "" || idx == "":
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "session_id and index go together")
	default:
		if u, err := uuid.Parse(sid); err != nil || u.String() != sid {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "session_id must be a lower-case UUID")
		}
		n, err := strconv.ParseUint(idx, 10, 64)
		if err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "index must be a whole number")
		}
		member = &packstore.Member{Session: sid, Index: n}
		out.SessionID, out.Index = sid, &n
	}
	// A chunk already stored takes no more room (a retried push, the
	// re-upload that repairs a damaged one); its hash is taken only then.
	// Put in a session at a new index it does: the index grows by its
	// entries, and stored chunks put in ever new sessions would fill the
	// card through it.
	if err := a.app.room(len(data)); err != nil && !a.app.holds(p.Subject, packstore.ID(data), member) {
		return err
	}
	id, isNew, err := a.app.store.AddWithin(r.Context(), p.Subject, data, member, a.app.quotas.Of(p.Tier))
	var qe *packstore.QuotaError
	switch {
	case errors.As(err, &qe):
		a.app.overQuota.WithLabelValues(string(p.Tier)).Inc()
		if qe.Deleted() {
			return service.Errorf(http.StatusInsufficientStorage, CodeQuota,
				"your chunks take %d of the %d bytes your tier may store here, but the %d bytes of chunks you deleted still take room until compaction reclaims them, and together they may take at most twice that: store this chunk after the next compaction (with each daily scrub), or ask the operator to compact now",
				qe.Bytes, qe.Quota, qe.DeadBytes)
		}
		return service.Errorf(http.StatusInsufficientStorage, CodeQuota,
			"your chunks take %d of the %d bytes your tier may store here, and this one would take %d more: delete chunks you no longer need (DELETE /api/v1/chunks/{id}), or ask the operator for a larger quota",
			qe.Bytes, qe.Quota, qe.Record)
	case errors.Is(err, packstore.ErrSealed):
		return service.Errorf(http.StatusConflict, service.CodeConflict, "session %s is sealed; it takes no more chunks", sid)
	case errors.Is(err, packstore.ErrIndexTaken):
		return service.Errorf(http.StatusConflict, service.CodeConflict, "%v", err)
	case errors.Is(err, packstore.ErrSessionFull):
		return service.Errorf(http.StatusConflict, service.CodeConflict, "session %s holds %d chunks, as many as a session may here (LUCID_SESSION_MAX_CHUNKS); start another session", sid, a.app.sessionChunks)
	case err != nil:
		return err
	}
	if isNew {
		a.app.stored.Inc()
	}
	a.app.bytes.Add(float64(len(data)))
	out.ID = id
	service.WriteJSON(w, http.StatusCreated, out)
	return nil
}

// holds reports whether owner's upload of chunk id, with member (nil
// for none), would write nothing new: the chunk is stored, and so is the
// member.
func (a *App) holds(owner, id string, member *packstore.Member) bool {
	if !a.store.Has(owner, id) {
		return false
	}
	return member == nil || a.store.HasMember(owner, id, *member)
}

// room refuses a chunk of n bytes that would leave less free disk than
// the reserve. A disk that cannot be measured is not held against it.
func (a *App) room(n int) error {
	if a.reserve == 0 || a.diskFree == nil {
		return nil
	}
	free, err := a.diskFree()
	if err != nil || free >= a.reserve+uint64(n) {
		return nil
	}
	he := service.Errorf(http.StatusInsufficientStorage, CodeDiskFull, "the disk is full: the data chain stores no more chunks until space is freed")
	he.Cause = fmt.Errorf("%d bytes free, %d kept in reserve (%s), a chunk of %d", free, a.reserve, envDiskReserve, n)
	return he
}

func tooLarge(limit int) error {
	return service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "a chunk is at most %d bytes", limit)
}

// sessionError is chunkError for a session lookup.
func sessionError(id string, err error) error {
	if errors.Is(err, packstore.ErrNotFound) {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no session %s", id)
	}
	return err
}

func chunkError(id string, err error) error {
	switch {
	case errors.Is(err, packstore.ErrNotFound):
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no chunk %s", id)
	case errors.Is(err, packstore.ErrCorrupt):
		he := service.Errorf(http.StatusInternalServerError, CodeDamaged, "chunk %s is damaged on disk; it will not be served: upload the same bytes again to repair it", id)
		he.Cause = err
		return he
	}
	return err
}

// get streams a chunk back after checking it against its id.
func (a *api) get(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	release, err := a.app.getSlots.acquire(r.Context(), p.Subject)
	if err != nil {
		return err
	}
	defer release()
	id := r.PathValue("id")
	data, err := a.app.store.Get(p.Subject, id)
	if err != nil {
		return chunkError(id, err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("ETag", `"`+id+`"`)
	_, err = w.Write(data)
	return err
}

func (a *api) head(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	id := r.PathValue("id")
	if _, err := a.app.store.Locate(p.Subject, id); err != nil {
		if errors.Is(err, packstore.ErrNotFound) {
			w.WriteHeader(http.StatusNotFound)
			return nil
		}
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// delete removes one of the principal's chunks, or, for the operator,
// the chunk of the owner named by ?owner= (empty: stored before owners).
func (a *api) delete(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	owner, err := service.OwnerOf(r)
	if err != nil {
		return err
	}
	err = a.app.store.Delete(owner, id)
	if errors.Is(err, packstore.ErrReferenced) {
		return service.Errorf(http.StatusConflict, service.CodeConflict, "%v", err)
	}
	if err != nil {
		return chunkError(id, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// SessionInfo answers GET /api/v1/sessions/{id}.
type SessionInfo struct {
	SessionID string    `json:"session_id"`
	Sealed    bool      `json:"sealed"`
	SealedAt  time.Time `json:"sealed_at,omitzero"`
	Anchor    string    `json:"anchor_tx,omitempty"`
	ChunkIDs  []string  `json:"chunks"`
	Root      string    `json:"root"`
}

func (a *api) session(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	sid := r.PathValue("id")
	sess, t, err := a.app.tree(r.Context(), p.Subject, sid)
	if err != nil {
		return sessionError(sid, err)
	}
	service.WriteJSON(w, http.StatusOK, SessionInfo{SessionID: sid, Sealed: sess.Sealed, SealedAt: sess.SealedAt, Anchor: sess.Anchor,
		ChunkIDs: t.ids, Root: hex.EncodeToString(t.root)})
	return nil
}

// ChunkProof proves a chunk is at an index of a session's tree.
type ChunkProof struct {
	SessionID string   `json:"session_id"`
	Index     uint64   `json:"index"`
	ChunkID   string   `json:"chunk_id"`
	TreeSize  uint64   `json:"tree_size"`
	Root      string   `json:"root"`
	Proof     []string `json:"proof"`
}

// proof gives the inclusion proof of the chunk at position {index} (its
// place in index order) of the session's tree.
func (a *api) proof(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	sid := r.PathValue("id")
	i, err := strconv.ParseUint(r.PathValue("index"), 10, 64)
	if err != nil {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "index must be a whole number")
	}
	_, t, err := a.app.tree(r.Context(), p.Subject, sid)
	if err != nil {
		return sessionError(sid, err)
	}
	size := uint64(len(t.ids))
	if i >= size {
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "session %s has %d chunks; no position %d", sid, size, i)
	}
	proof, err := t.tree.InclusionProof(i, size)
	if err != nil {
		return err
	}
	out := ChunkProof{SessionID: sid, Index: i, ChunkID: t.ids[i], TreeSize: size, Root: hex.EncodeToString(t.root), Proof: make([]string, len(proof))}
	for j, h := range proof {
		out.Proof[j] = hex.EncodeToString(h)
	}
	service.WriteJSON(w, http.StatusOK, out)
	return nil
}

// SealRequest is the body of POST /api/v1/sessions/{id}/seal: the parts of
// the anchor manifest the data chain does not know.
type SealRequest = datachainapi.SealRequest

// SealResponse answers a seal.
type SealResponse = datachainapi.Sealed

// seal freezes the session and anchors its root for its owner, the
// principal. Sealing again re-submits the same anchor (anchoring keeps one
// per session), so a seal that failed to reach anchoring is simply retried.
func (a *api) seal(w http.ResponseWriter, r *http.Request, p service.Principal) error {
	sid := r.PathValue("id")
	var req SealRequest
	if err := service.DecodeJSON(w, r, 16<<10, &req); err != nil {
		return err
	}
	if _, err := a.app.store.Session(p.Subject, sid); err != nil {
		return sessionError(sid, err)
	}
	// The owner on the chain is who asks, never what the body says; a
	// body naming someone else is a mistake worth saying.
	if req.Owner != "" && req.Owner != p.Subject {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "owner: a session is anchored for its owner, the token's subject; leave owner out")
	}
	// Check the request before freezing anything (the root is filled in
	// below, once the session can no longer change).
	m := &chain.SessionAnchor{SessionID: sid, Owner: p.Subject, ManifestHash: req.ManifestHash,
		MerkleRoot: strings.Repeat("0", 64), StartedAt: req.StartedAt, EndedAt: req.EndedAt}
	if err := m.ValidateNew(); err != nil {
		var fe chain.FieldErrors
		errors.As(err, &fe)
		he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "invalid seal request: %s", fe.Error())
		he.Fields = fe
		return he
	}
	if _, err := a.app.store.Seal(p.Subject, sid, ""); err != nil {
		return err
	}
	_, t, err := a.app.tree(r.Context(), p.Subject, sid)
	if err != nil {
		return err
	}
	m.MerkleRoot, m.ChunkCount = hex.EncodeToString(t.root), int64(len(t.ids))
	st, err := a.app.anchoring.Anchor(r.Context(), m)
	var refused *lucidapi.Error
	if errors.As(err, &refused) && refused.Status == http.StatusTooManyRequests {
		// The user's anchors of the day are used: its words, which say
		// until when.
		he := service.Errorf(http.StatusTooManyRequests, service.CodeRateLimit, "the session is sealed, but anchoring did not take its anchor: %s; seal again then", refused.Message)
		he.RetryAfter, he.Cause = refused.RetryAfter, err
		return he
	}
	if err != nil {
		he := service.Errorf(http.StatusBadGateway, CodeAnchoring, "the session is sealed but anchoring did not accept it yet; seal again to retry")
		he.Cause = err
		return he
	}
	if err := a.app.store.SetAnchor(p.Subject, sid, st.TxID); err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, SealResponse{SessionID: sid, Root: m.MerkleRoot, ChunkCount: len(t.ids), Anchor: st})
	return nil
}

func (a *api) verify(w http.ResponseWriter, r *http.Request) error {
	rep, err := a.app.scrub(r.Context())
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, rep)
	return nil
}

// compact rewrites packs that are mostly deleted chunks; reads go on.
func (a *api) compact(w http.ResponseWriter, r *http.Request) error {
	rep, err := a.app.store.Compact(r.Context())
	if err != nil {
		return err
	}
	service.WriteJSON(w, http.StatusOK, rep)
	return nil
}

// Status answers GET /api/v1/status; its shape is the client's.
type Status = datachainapi.Status

func (a *api) status(w http.ResponseWriter, r *http.Request) error {
	st, err := a.app.store.Stats()
	if err != nil {
		return err
	}
	keys, err := a.app.store.KeyUsage(r.Context())
	if err != nil {
		return err
	}
	a.app.mu.Lock()
	out := Status{Stats: st, LastScrub: a.app.lastScrub, Keys: keys}
	a.app.mu.Unlock()
	service.WriteJSON(w, http.StatusOK, out)
	return nil
}
