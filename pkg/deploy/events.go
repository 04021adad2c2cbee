package deploy

import "time"

// Step names a stage of a deploy or a rollback, in events and --json.
type Step string

// The steps, in the order a deploy meets them. Their strings are part of
// lucidctl's --json output and never change.
const (
	// StepConnect is reaching the host over SSH (reported by the caller,
	// which dials).
	StepConnect Step = "connect"
	// StepQuorum is a group deploy's check, before a host whose engine is
	// a voter of a Raft cluster goes down, that the others keep a quorum
	// (reported by the caller, which reads the group).
	StepQuorum Step = "quorum"
	// StepLeave is a cluster deploy's removal, before any host changes,
	// of the voters of its Raft configuration that are no host of the
	// cluster in lucid.yaml: each is reported, and removed (with its
	// validator key) only when the operator names it (reported by the
	// caller, which reads the cluster).
	StepLeave Step = "leave"
	// StepBootstrap is a cluster deploy's decision that its first host
	// starts a new Raft cluster, taken when no host of the cluster has a
	// Raft configuration, and that host's engine leading it afterwards
	// (reported by the caller).
	StepBootstrap Step = "bootstrap"
	// StepPreflight checks the host before anything changes.
	StepPreflight Step = "preflight"
	// StepSecrets compares the release's secrets with the host's current
	// release's, before anything changes.
	StepSecrets Step = "secrets"
	// StepLock takes, renews and releases the host's deploy lock.
	StepLock Step = "lock"
	// StepImages puts the images on the host.
	StepImages Step = "images"
	// StepRelease writes the release's files and its record.
	StepRelease Step = "release"
	// StepPlan is a dry run's answer.
	StepPlan Step = "plan"
	// StepUp is compose up of a release.
	StepUp Step = "up"
	// StepHealth is the health gate.
	StepHealth Step = "health"
	// StepCaughtUp is the gate's last step for an engine of a Raft cluster
	// of more than one server: it knows its leader and has applied
	// everything the cluster committed. An engine alone in its
	// configuration skips it (one info event says so).
	StepCaughtUp Step = "caught-up"
	// StepJoin is a cluster host's engine joining the cluster: as soon as
	// the new release's engine answers, its validator key is sealed into
	// the chain and it is added as a Raft voter through the leader; the
	// host's deploy then ends only once the leader's configuration holds
	// it as a voter and its engine has caught up (reported by the caller).
	StepJoin Step = "join"
	// StepActivate points current at a release that passed its gate and
	// records it live.
	StepActivate Step = "activate"
	// StepRollback brings an earlier release back.
	StepRollback Step = "rollback"
	// StepPrune removes releases beyond the newest few, and with
	// lucidctl prune what no kept release needs.
	StepPrune Step = "prune"
	// StepRestart, StepStop and StepStart change services of the current
	// release.
	StepRestart Step = "restart"
	StepStop    Step = "stop"
	StepStart   Step = "start"
	// StepAudit writes the host's audit log.
	StepAudit Step = "audit"
)

// EventStatus says how a step went.
type EventStatus string

// The statuses of an event. Their strings are part of lucidctl's --json
// output and never change.
const (
	// EventStart: the step begins.
	EventStart EventStatus = "start"
	// EventOK: the step is done.
	EventOK EventStatus = "ok"
	// EventFail: the step failed; Message says why.
	EventFail EventStatus = "fail"
	// EventInfo: progress or a note within the step.
	EventInfo EventStatus = "info"
	// EventWarn: something the operator should know that did not stop
	// the step (a lock that could not be renewed, a release not pruned).
	EventWarn EventStatus = "warn"
)

// Event is one step of a deploy or a rollback, for progress and --json.
// No event carries a secret: messages are made of names, counts and the
// host's own words about failures.
type Event struct {
	Time    time.Time   `json:"time"`
	Target  string      `json:"target"`
	Step    Step        `json:"step"`
	Status  EventStatus `json:"status"`
	Message string      `json:"message,omitempty"`
	// Bytes and Total count the image bytes sent so far, and to send.
	Bytes int64 `json:"bytes,omitempty"`
	Total int64 `json:"total,omitempty"`
}

// Reporter hears every event of a deploy or a rollback, as it happens.
// Event may be called from more than one goroutine, never at once.
type Reporter interface {
	Event(Event)
}

// ReporterFunc is a function that is a Reporter.
type ReporterFunc func(Event)

// Event calls f.
func (f ReporterFunc) Event(e Event) { f(e) }

var _ Reporter = ReporterFunc(nil)
