package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/sshx"
)

// AuditAction is what an audit entry records was done to a host. The
// strings are written to the hosts' audit logs and never change.
type AuditAction string

// The actions of the audit trail.
const (
	AuditDeploy   AuditAction = "deploy"
	AuditRollback AuditAction = "rollback"
	AuditRestart  AuditAction = "restart"
	AuditStop     AuditAction = "stop"
	AuditStart    AuditAction = "start"
	// AuditMaintenance is a maintenance command (Args says which and how).
	AuditMaintenance AuditAction = "maintenance"
	AuditPrune       AuditAction = "prune"
	// AuditBackup is a backup taken of the host (Args name the backup).
	AuditBackup AuditAction = "backup"
)

// AuditResult is how an audited action ended.
type AuditResult string

// The results of an audited action.
const (
	AuditOK     AuditResult = "ok"
	AuditFailed AuditResult = "failed"
)

// AuditEntry is one line of a host's audit log: when, who, what, on which
// release, and how it ended. It never holds a secret: Args are the
// command's arguments without secret values, Error the first line of the
// failure.
type AuditEntry struct {
	Time time.Time `json:"time"`
	// Target is the host's name in lucid.yaml.
	Target string `json:"target"`
	// User and Host are the operator's local user and machine.
	User string `json:"user"`
	Host string `json:"host"`
	// Key is the SHA256 fingerprint of the SSH key that authenticated.
	Key      string      `json:"key"`
	Action   AuditAction `json:"action"`
	Services []string    `json:"services,omitempty"`
	Args     []string    `json:"args,omitempty"`
	// Release is the release the action made or acted on.
	Release string      `json:"release,omitempty"`
	Result  AuditResult `json:"result"`
	Error   string      `json:"error,omitempty"`
}

// AuditFile is the audit log's name in the deploy directory: outside
// releases/, so pruning never touches it.
const AuditFile = "audit.log"

// auditMaxError bounds the error an entry keeps.
const auditMaxError = 500

// auditPath is the host's audit log.
func (h *host) auditPath() string { return path.Join(h.dir, AuditFile) }

// AuditError is an audit entry that could not be written. The action it
// records happened (or failed) regardless; the trail misses it, which is
// always reported.
type AuditError struct {
	Action AuditAction
	Err    error
}

// Error says which entry is missing and why.
func (e *AuditError) Error() string {
	return fmt.Sprintf("the audit entry of this %s was not written: %v", e.Action, e.Err)
}

// Unwrap returns the write's error.
func (e *AuditError) Unwrap() error { return e.Err }

// Audit appends e to the host's audit log, durably: the time, the
// target, the operator's user and machine and the key fingerprint are
// filled in when empty, and Result from Error when it is empty. The line
// is written by one append (O_APPEND, one write of the whole line) and
// fsynced before Audit returns, so concurrent writers never interleave
// and a power cut never loses an acknowledged entry. A failure is an
// *AuditError.
func (d *Deployer) Audit(ctx context.Context, e AuditEntry) error {
	d.fillAudit(&e)
	if err := d.h.appendAudit(ctx, e); err != nil {
		err = &AuditError{Action: e.Action, Err: err}
		d.emit(StepAudit, EventFail, err.Error())
		return err
	}
	return nil
}

func (d *Deployer) fillAudit(e *AuditEntry) {
	if e.Time.IsZero() {
		e.Time = d.cfg.Now().UTC()
	}
	if e.Target == "" {
		e.Target = d.cfg.Name
	}
	if e.User == "" {
		e.User = localUser()
	}
	if e.Host == "" {
		e.Host = localHost()
	}
	if e.Key == "" && d.cfg.SSH != nil {
		e.Key = d.cfg.SSH.KeyFingerprint()
	}
	if i := strings.IndexByte(e.Error, '\n'); i >= 0 {
		e.Error = e.Error[:i]
	}
	if len(e.Error) > auditMaxError {
		e.Error = e.Error[:auditMaxError] + "..."
	}
	if e.Result == "" {
		e.Result = AuditOK
		if e.Error != "" {
			e.Result = AuditFailed
		}
	}
}

// audited records the action e describes, which ended with err, and
// returns the audit's own failure (already reported as an event), if any.
// It writes even when ctx has ended: an interrupted action is recorded.
func (d *Deployer) audited(ctx context.Context, e AuditEntry, err error) error {
	if err != nil {
		e.Error, e.Result = err.Error(), AuditFailed
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return d.Audit(actx, e)
}

// appendAudit writes one entry as one line: dd reads the whole line
// (iflag=fullblock, one block bigger than any entry) and writes it with
// one write(2) to the file opened O_APPEND, then fsyncs it.
func (h *host) appendAudit(ctx context.Context, e AuditEntry) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	cmd := fmt.Sprintf("mkdir -p %s && dd of=%s oflag=append conv=notrunc,fsync bs=1M iflag=fullblock status=none",
		sshx.Quote(h.dir), sshx.Quote(h.auditPath()))
	if _, err := h.ssh.Run(ctx, cmd, bytes.NewReader(line)); err != nil {
		return fmt.Errorf("append to %s: %w", h.auditPath(), err)
	}
	return nil
}

// auditReadMax is how much of a host's audit log AuditLog reads, the
// newest: some 100,000 entries, far below what sshx.Run keeps.
const auditReadMax = 32 << 20

// ErrAuditLine is a line of the audit log that is not an entry.
var ErrAuditLine = errors.New("not an audit entry")

// AuditLog reads the host's audit log: the entries at or after since (all
// of them when since is zero, of its newest 32 MiB), oldest first, each
// with the host's target name. A host without a log has no
// entries. A line that is not an entry is an error naming it, with the
// entries read.
func (d *Deployer) AuditLog(ctx context.Context, since time.Time) ([]AuditEntry, error) {
	h := d.h
	// The newest auditReadMax bytes: the log is never cut, and grows for
	// years; what is older than them begins mid-line and is dropped.
	out, err := h.ssh.Run(ctx, fmt.Sprintf("f=%s; [ -e \"$f\" ] || exit 0; wc -c < \"$f\"; tail -c %d -- \"$f\"", sshx.Quote(h.auditPath()), auditReadMax), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", d.cfg.Name, h.auditPath(), err)
	}
	if size, rest, ok := bytes.Cut(out, []byte("\n")); ok {
		out = rest
		if n, _ := strconv.ParseInt(strings.TrimSpace(string(size)), 10, 64); n > auditReadMax {
			_, out, _ = bytes.Cut(out, []byte("\n"))
		}
	}
	var (
		entries []AuditEntry
		bad     []error
	)
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			bad = append(bad, fmt.Errorf("%s: %s line %d: %w", d.cfg.Name, h.auditPath(), n, ErrAuditLine))
			continue
		}
		if !since.IsZero() && e.Time.Before(since) {
			continue
		}
		// The log is this host's: a line naming another target (written
		// there by hand, or by the host itself) does not speak for it.
		e.Target = d.cfg.Name
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		bad = append(bad, fmt.Errorf("%s: %s: %w", d.cfg.Name, h.auditPath(), err))
	}
	return entries, errors.Join(bad...)
}

// auditOutcome records entry in the host's audit trail with the
// operation's outcome opErr, and returns the operation's error: a record
// that fails is joined to a failed operation's error; an operation that
// succeeded stands, and the failure goes to setAuditErr (its result says
// the trail misses it).
func (d *Deployer) auditOutcome(ctx context.Context, entry AuditEntry, opErr error, setAuditErr func(string)) error {
	aerr := d.audited(ctx, entry, opErr)
	switch {
	case aerr == nil:
	case opErr == nil:
		setAuditErr(aerr.Error())
	default:
		return errors.Join(opErr, aerr)
	}
	return opErr
}
