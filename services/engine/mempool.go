package engine

import (
	"errors"
	"sync"
)

// errMempoolFull is returned when the mempool is at its limit; clients
// retry later (anchoring does).
var errMempoolFull = errors.New("mempool is full")

// errSessionTaken is returned for a second anchor of a session.
var errSessionTaken = errors.New("session already has a queued anchor")

// mempool holds canonical transactions waiting for a block, in arrival
// order, de-duplicated by id, with system transactions first.
type mempool struct {
	mu       sync.Mutex
	max      int // transactions
	maxBytes int
	bytes    int
	order    []string // ids, oldest first; system transactions are kept in front
	system   int      // how many ids at the front of order are system transactions
	txs      map[string][]byte
	sessions map[string]string // owner ‖ 0 ‖ session id → queued anchor's tx id
	owner    map[string]string // tx id → its key in sessions
}

func newMempool(maxTxs, maxBytes int) *mempool {
	return &mempool{max: maxTxs, maxBytes: maxBytes, txs: map[string][]byte{}, sessions: map[string]string{}, owner: map[string]string{}}
}

// add queues tx (an anchor of owner's session, if session is set). For
// an id already queued it does nothing; for a session that already has
// another anchor queued it returns errSessionTaken and that anchor's id.
func (m *mempool) add(id string, tx []byte, owner, session string, system bool) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.txs[id]; ok {
		return "", nil
	}
	if session != "" {
		session = owner + "\x00" + session
		if other, ok := m.sessions[session]; ok {
			return other, errSessionTaken
		}
	}
	if len(m.txs) >= m.max || m.bytes+len(tx) > m.maxBytes {
		return "", errMempoolFull
	}
	m.txs[id] = tx
	m.bytes += len(tx)
	if session != "" {
		m.sessions[session], m.owner[id] = id, session
	}
	if system {
		m.order = append(m.order[:m.system], append([]string{id}, m.order[m.system:]...)...)
		m.system++
	} else {
		m.order = append(m.order, id)
	}
	return "", nil
}

func (m *mempool) has(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.txs[id]
	return ok
}

func (m *mempool) size() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.txs)
}

// next returns up to n transactions, oldest first, without removing them:
// they leave the mempool when a block that seals them is applied.
func (m *mempool) next(n int) (ids []string, txs [][]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range m.order {
		if len(ids) == n {
			break
		}
		ids = append(ids, id)
		txs = append(txs, m.txs[id])
	}
	return ids, txs
}

// remove drops sealed transactions.
func (m *mempool) remove(ids []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gone := map[string]bool{}
	for _, id := range ids {
		if tx, ok := m.txs[id]; ok {
			gone[id] = true
			m.bytes -= len(tx)
			delete(m.txs, id)
			if s, ok := m.owner[id]; ok {
				delete(m.sessions, s)
				delete(m.owner, id)
			}
		}
	}
	if len(gone) == 0 {
		return
	}
	kept := m.order[:0]
	system := 0
	for i, id := range m.order {
		if gone[id] {
			continue
		}
		if i < m.system {
			system++
		}
		kept = append(kept, id)
	}
	m.order, m.system = kept, system
}
