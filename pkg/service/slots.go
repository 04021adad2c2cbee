package service

import (
	"context"
	"net/http"
	"sync"
)

// Slots bounds long-lived work that users start, such as block streams and
// chain audits: at most PerUser at once for any one principal, and Total
// for all users together, so one user cannot take what the others need.
// Requests made by a service for itself (no principal) are not counted:
// the stack's own followers must never wait behind users. Anonymous users
// (a public route through the gateway) are counted as one user.
type Slots struct {
	name           string
	total, perUser int

	mu     sync.Mutex
	inUse  int
	byUser map[string]int
}

// anonymousSlotsKey holds the anonymous users' slots: no token subject is
// empty.
const anonymousSlotsKey = ""

// NewSlots returns slots for the work called name (it appears in errors).
func NewSlots(name string, total, perUser int) *Slots {
	return &Slots{name: name, total: total, perUser: perUser, byUser: map[string]int{}}
}

// Acquire takes a slot for the principal of ctx's request, if any. It does
// not wait: a user at their own limit gets 429, a full house 503, both
// with Retry-After. release gives the slot back.
func (s *Slots) Acquire(ctx context.Context) (release func(), err error) {
	p, ok := PrincipalOf(ctx)
	switch {
	case ok:
	case fromPublicDoor(ctx):
		p = Principal{Subject: anonymousSlotsKey}
	default:
		return func() {}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.byUser[p.Subject] >= s.perUser:
		he := Errorf(http.StatusTooManyRequests, CodeRateLimit, "at most %d %s at once per user; wait for one to end", s.perUser, s.name)
		he.RetryAfter = 5
		return nil, he
	case s.inUse >= s.total:
		he := Errorf(http.StatusServiceUnavailable, CodeUnready, "the service runs as many %s as it can; try again shortly", s.name)
		he.RetryAfter = 5
		return nil, he
	}
	s.inUse++
	s.byUser[p.Subject]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.inUse--
			if s.byUser[p.Subject]--; s.byUser[p.Subject] == 0 {
				delete(s.byUser, p.Subject)
			}
		})
	}, nil
}
