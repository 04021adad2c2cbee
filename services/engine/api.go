package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
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

type api struct {
	node    *node
	streams *service.Slots // users' block streams
}

// streamWriteTimeout cuts off a stream whose reader stopped reading, so it
// holds neither its slot nor a goroutine for good.
const streamWriteTimeout = 30 * time.Second

// routes installs the API. The chain is read by anyone the services let
// in (users through the gateway); only session anchoring submits, and only
// the operator changes the voters.
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
	// The consensus status names the cluster's nodes and their addresses:
	// for the operator and the services, not for users through the
	// gateway's /blockchain prefix.
	srv.Handle("GET /api/v1/consensus/status", service.NotForUsers(a.consensus))
	srv.Handle("GET /consensus/status", service.NotForUsers(a.consensus))
	srv.Handle("POST /api/v1/consensus/voters", service.ForOperator(a.addVoter))
	srv.Handle("DELETE /api/v1/consensus/voters/{id}", service.ForOperator(a.removeVoter))
	a.fenceRoutes(srv)
}

func notLeader(n *node) error {
	addr, id := n.raft.LeaderWithID()
	he := service.Errorf(http.StatusServiceUnavailable, engineapi.CodeNotLeader, "this node is not the leader; submit to the leader")
	he.Fields = map[string]string{"leader_id": string(id), "leader_raft_addr": string(addr)}
	return he
}

// submitter is the one caller that may submit transactions: session
// anchoring, which checks and owns every anchor it sends. Users reach the
// chain only through it, so nobody can put an anchor on the chain for a
// session that is not theirs, or one anchoring does not know about.
const submitter = "anchoring"

// submit accepts one transaction object or an array of them and answers
// item by item: each is pending, sealed, refused (with its reason: it is
// invalid, or its session already has another anchor) or deferred (the
// mempool is full; send it again later). One refused item never holds
// back another.
func (a *api) submit(w http.ResponseWriter, r *http.Request) error {
	if caller, _ := service.CallerOf(r.Context()); caller != submitter {
		return service.Errorf(http.StatusForbidden, service.CodeForbidden, "transactions are submitted by session anchoring (POST /api/v1/anchors)")
	}
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
	if !a.node.isLeader() {
		return notLeader(a.node)
	}
	out := engineapi.SubmitResponse{Transactions: make([]engineapi.TxStatus, len(items))}
	for i, item := range items {
		out.Transactions[i] = a.node.submitOne(item)
	}
	service.WriteJSON(w, http.StatusAccepted, out)
	return nil
}

// submitOne checks and admits one transaction.
func (n *node) submitOne(item []byte) engineapi.TxStatus {
	refuse := func(st engineapi.TxStatus, code, format string, args ...any) engineapi.TxStatus {
		st.Status, st.Code, st.Reason = engineapi.StatusRefused, code, fmt.Sprintf(format, args...)
		return st
	}
	var st engineapi.TxStatus
	tx, err := chain.ParseTransaction(item)
	if err != nil {
		return refuse(st, service.CodeBadRequest, "%v", err)
	}
	if tx.Type == chain.TypeSystem {
		// Validator changes come only from the voter API, which is
		// authenticated and checks what it changes.
		return refuse(st, service.CodeBadRequest, "type: system transactions are made by the engine itself (use the consensus voter API)")
	}
	if err := tx.ValidateNew(); err != nil {
		return refuse(st, service.CodeBadRequest, "%v", err)
	}
	c, err := tx.Encode()
	if err != nil {
		return refuse(st, service.CodeBadRequest, "%v", err)
	}
	st.ID = chain.TxID(c)
	if len(c) > chain.MaxTxBytes {
		return refuse(st, service.CodeTooLarge, "transaction is larger than %d bytes", chain.MaxTxBytes)
	}
	if loc, err := n.store.Tx(st.ID); err == nil {
		st.Status, st.Height, st.Index = engineapi.StatusSealed, loc.Height, &loc.Index
		return st
	}
	var owner, session string
	if tx.Anchor != nil {
		owner, session = tx.Anchor.Owner, tx.Anchor.SessionID
	}
	switch other, err := n.admit(st.ID, c, owner, session); {
	case errors.Is(err, errSessionTaken):
		return refuse(st, service.CodeConflict, "session %s of %s is already anchored by transaction %s", session, owner, other)
	case errors.Is(err, errMempoolFull):
		st.Status, st.Code, st.Reason = engineapi.StatusDeferred, engineapi.CodeMempoolFull, err.Error()+"; send it again later"
		return st
	case err != nil:
		st.Status, st.Code, st.Reason = engineapi.StatusDeferred, service.CodeInternal, "not admitted; send it again later"
		return st
	}
	st.Status = engineapi.StatusPending
	return st
}

func (a *api) txStatus(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	st := engineapi.TxStatus{ID: id}
	loc, err := a.node.store.Tx(id)
	switch {
	case err == nil:
		st.Status, st.Height, st.Index = engineapi.StatusSealed, loc.Height, &loc.Index
		// The block's hash is its header's: read from its checkpoint,
		// not from the whole block.
		if cp, err := a.node.store.Checkpoint(loc.Height); err == nil {
			if h, err := (&chain.Block{Checkpoint: string(cp)}).Header(); err == nil {
				st.BlockHash = h.Hash()
			}
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

func (a *api) chainInfo(w http.ResponseWriter, r *http.Request) error {
	n := a.node
	vals := n.store.Validators()
	if vals == nil {
		vals = []string{} // a stable shape before the first block
	}
	info := engineapi.ChainInfo{
		ChainID: n.cfg.ChainID, Origin: n.origin, NodeID: n.cfg.NodeID, ValidatorKey: n.vkey,
		Validators: vals, BlockInterval: n.cfg.BlockInterval.String(), Leader: n.isLeader(),
		Root:   base64.StdEncoding.EncodeToString(logtree.Hasher.EmptyRoot()),
		Fenced: n.fence.active(),
	}
	if service.ForAUser(r.Context()) {
		info.NodeID = "" // which host answers is the deployment's, not a user's, business
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
	release, err := a.streams.Acquire(r.Context())
	if err != nil {
		return err
	}
	defer release()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	// The answer's headers go now, not with the first block: a follower
	// from the head waits for the next block, which may be longer in
	// coming than a proxy waits for headers (the gateway's 30 s).
	if err := rc.Flush(); err != nil || r.Method == http.MethodHead {
		return nil // gone, or asked for the headers alone
	}
	next := from
	for {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
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
	// Raft says its commit index only among its stats, as a string.
	if ci, err := strconv.ParseUint(n.raft.Stats()["commit_index"], 10, 64); err == nil {
		st.CommitIndex = ci
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
	if err := tx.ValidateNew(); err != nil {
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
	if err := a.node.addValidator(r.Context(), tx); err != nil {
		return err
	}
	if err := a.node.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.Address), 0, 10*time.Second).Error(); err != nil {
		return configurationError(a.node, "add voter", err)
	}
	return a.consensus(w, r)
}

// removeVoter takes node id out of Raft, then, with ?key=, seals the
// removal of its validator key: in that order, so that no voter is left
// whose blocks every node refuses, however the request ends. A key named
// after id that another key of id's has replaced (a new card's engine
// made a new key and joined) is removed alone: the node, live, stays.
func (a *api) removeVoter(w http.ResponseWriter, r *http.Request) error {
	if !a.node.isLeader() {
		return notLeader(a.node)
	}
	id := r.PathValue("id")
	var tx *chain.Transaction
	replaced := false
	if key := r.URL.Query().Get("key"); key != "" {
		vals := a.node.store.Validators()
		if key == a.node.vkey {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "the leader cannot remove its own validator key; remove it from another leader")
		}
		if len(vals) == 1 && vals[0] == key {
			return service.Errorf(http.StatusConflict, service.CodeConflict, "that is the last validator; the chain would stop")
		}
		tx = &chain.Transaction{Type: chain.TypeSystem, System: &chain.SystemChange{Action: chain.ActionRemoveValidator, Key: key, Node: id}}
		if err := tx.ValidateNew(); err != nil {
			return service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "key: %v", err)
		}
		replaced = keyName(key) == id && slices.ContainsFunc(vals, func(k string) bool { return k != key && keyName(k) == id })
	}
	if !replaced {
		if err := a.node.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return configurationError(a.node, "remove voter", err)
		}
	}
	if tx != nil {
		// Sealed even if the client leaves: the node is out already.
		if err := a.node.sealSystem(context.WithoutCancel(r.Context()), tx); err != nil {
			var he *service.HTTPError
			if !replaced && errors.As(err, &he) && he.Code == engineapi.CodeNotLeader {
				// Not "nothing was done": the node is out of Raft.
				he.Message = fmt.Sprintf("node %s was removed from the voters, but this engine stopped leading before the removal of its key was sealed: "+
					"remove it again through the leader, which finds the key alone and seals its removal", id)
			}
			return err
		}
	}
	return a.consensus(w, r)
}

// configurationError is the answer to a change of the voters that Raft
// did not make. Leadership lost while it was under way (an election on a
// starved core) is said as not leading, so the caller goes to the new
// leader, where the same change is safe to make again; a change Raft
// could not take yet (another still committing, a hand-over, a stop) as
// a consensus error, worth trying again; any other as a conflict with the
// configuration (a duplicate address, no voter left), which no retry
// mends.
func configurationError(n *node, what string, err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost):
		return notLeader(n)
	case errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrRaftShutdown):
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeConsensus, "%s: %v", what, err)
	}
	return service.Errorf(http.StatusConflict, service.CodeConflict, "%s: %v", what, err)
}

// keyName is the name a validator key carries: its node's id when the key
// was made.
func keyName(key string) string {
	v, err := chain.ParseVerifier(key)
	if err != nil {
		return ""
	}
	return v.Name()
}

// addValidator makes tx's key a validator, unless it is one already. A
// system transaction is sealed once: the same change again has the same
// id, so the key of a validator removed earlier would never be added back
// (the change is sealed already, its effect undone), and the node would
// join with blocks that every node refuses. That key is refused; the node
// takes a new one.
func (n *node) addValidator(ctx context.Context, tx *chain.Transaction) error {
	if slices.Contains(n.store.Validators(), tx.System.Key) {
		return nil
	}
	c, err := tx.Encode()
	if err != nil {
		return err
	}
	if id := chain.TxID(c); n.store.HasTx(id) {
		return service.Errorf(http.StatusConflict, service.CodeConflict,
			"validator key %s was removed from the chain and cannot be a validator again: give node %s a new key (move validator.key and validator.pub out of its engine's data directory and restart it), then add it with that key",
			tx.System.Key, tx.System.Node)
	}
	return n.sealSystem(ctx, tx)
}

// sealSystem queues a system transaction ahead of the others and waits
// until a block seals it.
func (n *node) sealSystem(ctx context.Context, tx *chain.Transaction) error {
	c, err := tx.Encode()
	if err != nil {
		return err
	}
	id := chain.TxID(c)
	if _, err := n.mempool.add(id, c, "", "", true); err != nil {
		return service.Errorf(http.StatusServiceUnavailable, engineapi.CodeMempoolFull, "%v", err)
	}
	deadline := time.After(3*n.cfg.BlockInterval + 5*time.Second)
	for {
		if _, err := n.store.Tx(id); err == nil {
			return nil
		}
		if !n.isLeader() {
			// Only a leader seals: the change goes to the one there is now.
			return notLeader(n)
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

// admit queues a canonical transaction (an anchor of owner's session, if
// session is set), refusing (errSessionTaken, with the other anchor's id)
// a second, different anchor for a session that already has one sealed or
// queued.
func (n *node) admit(id string, c []byte, owner, session string) (string, error) {
	if session != "" {
		if other, err := n.store.SessionTx(owner, session); err == nil && other != id {
			return other, errSessionTaken
		}
	}
	return n.mempool.add(id, c, owner, session, false)
}

func (n *node) checkLeader(context.Context) error {
	if addr, _ := n.raft.LeaderWithID(); addr == "" {
		return errors.New("no raft leader")
	}
	return nil
}
