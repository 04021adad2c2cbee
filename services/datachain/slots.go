package datachain

import (
	"context"
	"sync"
)

// fairSlots bound how many requests hold chunk bytes in memory at once,
// and give each user at most share of them. A user at their share waits
// for one of their own requests to end, not for everyone's: one user
// whose bodies trickle in, or who never reads the answers, holds at most
// their share until the gateway cuts them off, and the others go on.
type fairSlots struct {
	all   chan struct{}
	share int
	mu    sync.Mutex
	users map[string]*userSlots
}

// userSlots are one user's slots in use, and how many of their requests
// hold or wait for one (the entry goes when none does).
type userSlots struct {
	held chan struct{}
	refs int
}

func newFairSlots(total, share int) *fairSlots {
	return &fairSlots{all: make(chan struct{}, total), share: share, users: map[string]*userSlots{}}
}

// acquire takes a slot for user, waiting while ctx lasts; release gives
// it back.
func (s *fairSlots) acquire(ctx context.Context, user string) (release func(), err error) {
	s.mu.Lock()
	u := s.users[user]
	if u == nil {
		u = &userSlots{held: make(chan struct{}, s.share)}
		s.users[user] = u
	}
	u.refs++
	s.mu.Unlock()
	leave := func() {
		s.mu.Lock()
		if u.refs--; u.refs == 0 {
			delete(s.users, user)
		}
		s.mu.Unlock()
	}
	select {
	case u.held <- struct{}{}:
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
	select {
	case s.all <- struct{}{}:
	case <-ctx.Done():
		<-u.held
		leave()
		return nil, ctx.Err()
	}
	return func() {
		<-s.all
		<-u.held
		leave()
	}, nil
}

// inUse is how many slots are taken.
func (s *fairSlots) inUse() int { return len(s.all) }
