package engine

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chainstore/storehttp"
	"github.com/pickme/lucid/pkg/logtree"
	"github.com/pickme/lucid/pkg/service"
)

// Request limits: one call carries at most maxBatch transactions in at most
// maxBody bytes.
const (
	maxBatch = 1000
	maxBody  = 8 << 20
)

type api struct{ node *node }

func (a *api) routes(srv *service.Server) {
	srv.Handle("POST /api/v1/transactions", a.submit)
	srv.Handle("GET /api/v1/transactions/{id}", a.txStatus)
	store := storehttp.Handlers{Store: a.node.store}
	srv.Handle("GET /api/v1/transactions/{id}/receipt", store.Receipt)
	srv.Handle("GET /api/v1/chain", a.chainInfo)
	srv.Handle("GET /status", a.chainInfo) // the Phase 2 path
	store.Register(srv)
	srv.Handle("GET /api/v1/blocks/stream", a.stream)
	srv.Handle("GET /api/v1/consistency", a.consistency)
	srv.Handle("GET /api/v1/consensus/status", a.consensus)
	srv.Handle("GET /consensus/status", a.consensus)
	srv.Handle("POST /api/v1/consensus/voters", a.addVoter)
	srv.Handle("DELETE /api/v1/consensus/voters/{id}", a.removeVoter)
}

func notLeader(n *node) error {
	addr, id := n.raft.LeaderWithID()
	he := service.Errorf(http.StatusServiceUnavailable, engineapi.CodeNotLeader, "this node is not the leader; submit to the leader")
	he.Fields = map[string]string{"leader_id": string(id), "leader_raft_addr": string(addr)}
	return he
}

// submit accepts one transaction object or an array of them.
func (a *api) submit(w http.ResponseWriter, r *http.Request) error {
	var raw json.RawMessage
	if err := service.DecodeJSON(w, r, maxBody, &raw); err != nil {
		return err
	}
	var items []json.RawMessage
	trimmed := strings.TrimLeft(string(raw), " \t\r\n")
	if strings.HasPrefix(trimmed, "[") {
		if err := json.Unmarshal(raw, &items); err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "malformed transaction array")
		}
		if len(items) == 0 {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "the array is empty")
		}
		if len(items) > maxBatch {
			return service.Errorf(http.StatusRequestEntityTooLarge, service.CodeTooLarge, "%d transactions in one call; at most %d", len(items), maxBatch)
		}
	} else {
		items = []json.RawMessage{raw}
	}

	// Validate everything before accepting anything.
	var fields chain.FieldErrors
	canon := make([][]byte, len(items))
	sessions := make([]string, len(items)) // anchors' session ids
	for i, item := range items {
		prefix := ""
		if len(items) > 1 || strings.HasPrefix(trimmed, "[") {
			prefix = fmt.Sprintf("[%d].", i)
		}
		tx, err := chain.ParseTransaction(item)
		if err != nil {
			fields = append(fields, chain.FieldError{Field: strings.TrimSuffix(prefix, "."), Message: err.Error()})
			continue
		}
		if tx.Type == chain.TypeSystem {
			// Validator changes come only from the voter API, which is
			// authenticated and checks what it changes.
			fields = append(fields, chain.FieldError{Field: prefix + "type", Message: "system transactions are made by the engine itself (use the consensus voter API)"})
			continue
		}
		if err := tx.Validate(); err != nil {
			var fe chain.FieldErrors
			if errors.As(err, &fe) {
				for _, e := range fe {
					fields = append(fields, chain.FieldError{Field: prefix + e.Field, Message: e.Message})
				}
			}
			continue
		}
		if tx.Anchor != nil {
			sessions[i] = tx.Anchor.SessionID
		}
		if canon[i], err = tx.Encode(); err != nil {
			return err
		}
		if len(canon[i]) > chain.MaxTxBytes {
			fields = append(fields, chain.FieldError{Field: strings.TrimSuffix(prefix, "."), Message: fmt.Sprintf("transaction is larger than %d bytes", chain.MaxTxBytes)})
		}
	}
	if len(fields) > 0 {
		he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "invalid transaction: %s", fields[0].Field+": "+fields[0].Message)
		he.Fields = fields
		return he
	}
	if !a.node.isLeader() {
		return notLeader(a.node)
	}
	out := engineapi.SubmitResponse{Transactions: make([]engineapi.TxStatus, len(canon))}
	for i, c := range canon {
		id := chain.TxID(c)
		st := engineapi.TxStatus{ID: id, Status: engineapi.StatusPending}
		if loc, err := a.node.store.Tx(id); err == nil {
			st.Status, st.Height, st.Index = engineapi.StatusSealed, loc.Height, &loc.Index
		} else if err := a.node.admit(id, c, sessions[i]); err != nil {
			return err
		}
		out.Transactions[i] = st
	}
	service.WriteJSON(w, http.StatusAccepted, out)
	return nil
}

func (a *api) txStatus(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	st := engineapi.TxStatus{ID: id}
	loc, err := a.node.store.Tx(id)
	switch {
	case err == nil:
		st.Status, st.Height, st.Index = engineapi.StatusSealed, loc.Height, &loc.Index
		if b, err := a.node.store.Block(loc.Height); err == nil {
			st.BlockHash = b.Hash
		}
		st.Confirmations = a.node.store.Height() - loc.Height + 1
	case a.node.mempool.has(id):
		st.Status = engineapi.StatusPending
	default:
		return service.Errorf(http.StatusNotFound, service.CodeNotFound, "no transaction %s", id)
	}
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

func (a *api) chainInfo(w http.ResponseWriter, _ *http.Request) error {
	n := a.node
	vals := n.store.Validators()
	if vals == nil {
		vals = []string{} // a stable shape before the first block
	}
	info := engineapi.ChainInfo{
		ChainID: n.cfg.ChainID, Origin: n.origin, NodeID: n.cfg.NodeID, ValidatorKey: n.vkey,
		Validators: vals, BlockInterval: n.cfg.BlockInterval.String(), Leader: n.isLeader(),
		Root: base64.StdEncoding.EncodeToString(logtree.Hasher.EmptyRoot()),
	}
	if h := n.store.Head(); h != nil {
		info.Height, info.HeadHash, info.TreeSize = h.Height, h.Hash(), h.TreeSize
		info.Root = base64.StdEncoding.EncodeToString(h.Root)
		info.HeadTime = h.Time
	}
	service.WriteJSON(w, http.StatusOK, info)
	return nil
}

// stream sends every block from ?from= (default 1) as NDJSON, then each
// new block as it is sealed, until the client goes away.
func (a *api) stream(w http.ResponseWriter, r *http.Request) error {
	from := uint64(1)
	if v := r.URL.Query().Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "from must be a positive whole number")
		}
		from = n
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	next := from
	for {
		changed := a.node.store.Changed()
		head := a.node.store.Height()
		for head >= next {
			// Copy a batch out, then write it: a slow reader must not
			// hold a database transaction open.
			batch, err := a.node.store.BlockRange(next, head, 4<<20)
			if err != nil {
				return err
			}
			for _, raw := range batch {
				if _, err := w.Write(append(raw, '\n')); err != nil {
					return nil // the client went away
				}
				next++
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-changed:
		case <-time.After(30 * time.Second):
			// A blank line keeps proxies from closing an idle stream.
			if _, err := w.Write([]byte("\n")); err != nil {
				return nil
			}
			_ = rc.Flush()
		}
	}
}

func (a *api) consistency(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	from, err1 := strconv.ParseUint(q.Get("from"), 10, 64)
	to, err2 := strconv.ParseUint(q.Get("to"), 10, 64)
	if err1 != nil || err2 != nil || from > to {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "from and to must be tree sizes with from <= to")
	}
	p, err := a.node.store.ConsistencyProof(from, to)
	if err != nil {
		return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "%v", err)
	}
	out := engineapi.ConsistencyProof{From: from, To: to, Proof: make([]string, len(p))}
	for i, h := range p {
		out.Proof[i] = base64.StdEncoding.EncodeToString(h)
	}
	service.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *api) consensus(w http.ResponseWriter, _ *http.Request) error {
	n := a.node
	addr, id := n.raft.LeaderWithID()
	st := engineapi.ConsensusStatus{
		NodeID: n.cfg.NodeID, State: strings.ToLower(n.raft.State().String()),
		LeaderID: string(id), LeaderAddr: string(addr), RaftAddr: string(n.trans.LocalAddr()),
		Term: n.raft.CurrentTerm(), LastIndex: n.raft.LastIndex(), AppliedIndex: n.raft.AppliedIndex(),
		ValidatorKey: n.vkey, Height: n.store.Height(),
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			st.Servers = append(st.Servers, engineapi.Server{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter})
		}
	}
	service.WriteJSON(w, http.StatusOK, st)
	return nil
}

// addVoter adds a node: its validator key goes into the chain first (a
// system transaction, sealed), then the node joins Raft as a voter, so every
// block it may sign is verifiable by everyone.
func (a *api) addVoter(w http.ResponseWriter, r *http.Request) error {
	if err := a.node.authorizeAdmin(r); err != nil {
		return err
	}
	var req engineapi.AddVoterRequest
	if err := service.DecodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	var fields chain.FieldErrors
	if !nameRE.MatchString(req.ID) {
		fields = append(fields, chain.FieldError{Field: "id", Message: "must be a node id"})
	}
	if req.Address == "" {
		fields = append(fields, chain.FieldError{Field: "address", Message: "is required (host:port of its raft transport)"})
	}
	tx := &chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionAddValidator, Key: req.Key, Node: req.ID}}
	if err := tx.Validate(); err != nil {
		fields = append(fields, chain.FieldError{Field: "key", Message: err.Error()})
	}
	if len(fields) > 0 {
		he := service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "invalid voter: %s", fields.Error())
		he.Fields = fields
		return he
	}
	if !a.node.isLeader() {
		return notLeader(a.node)
	}
	if err := a.node.sealSystem(r.Context(), tx); err != nil {
		return err
	}
	if err := a.node.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.Address), 0, 10*time.Second).Error(); err != nil {
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeConsensus, "add voter: %v", err)
	}
	return a.consensus(w, r)
}

func (a *api) removeVoter(w http.ResponseWriter, r *http.Request) error {
	if err := a.node.authorizeAdmin(r); err != nil {
		return err
	}
	if !a.node.isLeader() {
		return notLeader(a.node)
	}
	id := r.PathValue("id")
	if key := r.URL.Query().Get("key"); key != "" {
		vals := a.node.store.Validators()
		if key == a.node.vkey {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "the leader cannot remove its own validator key; remove it from another leader")
		}
		if len(vals) == 1 && vals[0] == key {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "that is the last validator; the chain would stop")
		}
		tx := &chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionRemoveValidator, Key: key, Node: id}}
		if err := tx.Validate(); err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "key: %v", err)
		}
		if err := a.node.sealSystem(r.Context(), tx); err != nil {
			return err
		}
	}
	if err := a.node.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeConsensus, "remove voter: %v", err)
	}
	return a.consensus(w, r)
}

// sealSystem queues a system transaction ahead of the others and waits
// until a block seals it.
func (n *node) sealSystem(ctx context.Context, tx *chain.Transaction) error {
	c, err := tx.Encode()
	if err != nil {
		return err
	}
	id := chain.TxID(c)
	if _, err := n.mempool.add(id, c, "", true); err != nil {
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeMempoolFull, "%v", err)
	}
	deadline := time.After(3*n.cfg.BlockInterval + 5*time.Second)
	for {
		if _, err := n.store.Tx(id); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return service.Errorf(http.StatusGatewayTimeout, engineapi.CodeConsensus, "system transaction %s not sealed in time", id)
		case <-n.store.Changed():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// admit queues a canonical transaction (an anchor of session, if session
// is set), refusing a second, different anchor for a session that already
// has one sealed or queued.
func (n *node) admit(id string, c []byte, session string) error {
	if session != "" {
		if other, err := n.store.SessionTx(session); err == nil && other != id {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "session %s is already anchored by transaction %s", session, other)
		}
	}
	if other, err := n.mempool.add(id, c, session, false); errors.Is(err, errSessionTaken) {
		return service.Errorf(http.StatusConflict, service.CodeConflict, "session %s already has transaction %s waiting", session, other)
	} else if err != nil {
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeMempoolFull, "%v; retry later", err)
	}
	return nil
}

// authorizeAdmin guards the cluster-changing endpoints with
// LUCID_ENGINE_ADMIN_TOKEN; without one configured they are closed.
func (n *node) authorizeAdmin(r *http.Request) error {
	if n.cfg.AdminToken == "" {
		return service.Errorf(http.StatusForbidden, service.CodeAuth, "cluster changes are disabled: set LUCID_ENGINE_ADMIN_TOKEN to enable them")
	}
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(got), []byte(n.cfg.AdminToken)) != 1 {
		return service.Errorf(http.StatusUnauthorized, service.CodeAuth, "a valid admin token is required")
	}
	return nil
}

func (n *node) checkLeader(context.Context) error {
	if addr, _ := n.raft.LeaderWithID(); addr == "" {
		return errors.New("no raft leader")
	}
	return nil
}
