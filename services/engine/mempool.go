package engine

import (
	"errors"
	"sync"
)

// errMempoolFull is returned when the mempool is at its limit; clients
// retry later (anchoring does).
var errMempoolFull = errors.New("mempool is full")

// mempool holds canonical transactions waiting for a block, in arrival
// order, de-duplicated by id, with system transactions first.
type mempool struct {
	mu     sync.Mutex
	max    int
	order  []string // ids, oldest first; system transactions are kept in front
	system int      // how many ids at the front of order are system transactions
	txs    map[string][]byte
}

func newMempool(max int) *mempool {
	return &mempool{max: max, txs: map[string][]byte{}}
}

// add queues tx. It reports false when the id is already queued.
func (m *mempool) add(id string, tx []byte, system bool) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.txs[id]; ok {
		return false, nil
	}
	if len(m.txs) >= m.max {
		return false, errMempoolFull
	}
	m.txs[id] = tx
	if system {
		m.order = append(m.order[:m.system], append([]string{id}, m.order[m.system:]...)...)
		m.system++
	} else {
		m.order = append(m.order, id)
	}
	return true, nil
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
		if _, ok := m.txs[id]; ok {
			gone[id] = true
			delete(m.txs, id)
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
