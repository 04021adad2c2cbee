package deploy

import (
	"fmt"
	"slices"
)

// ReleaseStatus is where a release stands, as its release.json records it.
// The strings are those release.json has always held, so releases written
// by any lucidctl still read.
type ReleaseStatus string

// The statuses of a release.
const (
	// ReleaseDeploying: written, not yet through its health gate (or the
	// deploy stopped before it knew).
	ReleaseDeploying ReleaseStatus = "deploying"
	// ReleaseLive: passed its gate and was made current.
	ReleaseLive ReleaseStatus = "live"
	// ReleaseFailed: failed its health gate.
	ReleaseFailed ReleaseStatus = "failed"
	// ReleaseReplaced: was live until another release went live.
	ReleaseReplaced ReleaseStatus = "replaced"
	// ReleaseUnknown: the release has no readable release.json. It is
	// only ever read, never written.
	ReleaseUnknown ReleaseStatus = "unknown"
)

// transitions is the life cycle of a release, the only place that says
// which status may follow which. A new release has no status yet ("").
var transitions = map[ReleaseStatus][]ReleaseStatus{
	"":               {ReleaseDeploying},
	ReleaseDeploying: {ReleaseLive, ReleaseFailed, ReleaseReplaced},
	ReleaseLive:      {ReleaseReplaced},
	ReleaseReplaced:  {ReleaseLive},
	ReleaseFailed:    {ReleaseLive},
	ReleaseUnknown:   {ReleaseLive, ReleaseReplaced},
}

// A deploying release goes to replaced only when it was current: it passed
// its gate and went live, but the record saying so was never written. A
// failed release goes live only when a rollback names it and it passes its
// gate then. A release without a readable record can still be rolled back
// to, and replaced.

// WentLive reports whether a release in status s once passed its gate and
// served: what a rollback may return to by default.
func (s ReleaseStatus) WentLive() bool { return s == ReleaseLive || s == ReleaseReplaced }

// Transition checks that a release in status from may move to status to;
// otherwise it returns a *TransitionError. Staying in the same status is
// no transition and always allowed.
func Transition(from, to ReleaseStatus) error {
	if from == to || slices.Contains(transitions[from], to) {
		return nil
	}
	return &TransitionError{From: from, To: to}
}

// TransitionError is a status change the life cycle does not allow.
type TransitionError struct {
	From, To ReleaseStatus
}

// Error says which change was refused.
func (e *TransitionError) Error() string {
	from := string(e.From)
	if from == "" {
		from = "new"
	}
	return fmt.Sprintf("a %s release cannot become %s", from, e.To)
}

// RecordError is a release record (release.json) that could not be
// written. The host runs what it runs, but its records no longer say so,
// and `rollback` chooses by them: it is always reported, never dropped.
type RecordError struct {
	Release string
	Status  ReleaseStatus
	Err     error
}

// Error names the release and the status it could not be given.
func (e *RecordError) Error() string {
	return fmt.Sprintf("record release %s as %s: %v", e.Release, e.Status, e.Err)
}

// Unwrap returns the write's error.
func (e *RecordError) Unwrap() error { return e.Err }
