package deploy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/deploy"
)

// TestEventsCannotDriveTheTerminal: an event's message quotes hosts (a
// lock's holder, as the lock file says it), so its control characters
// reach the terminal escaped; its lines stay lines.
func TestEventsCannotDriveTheTerminal(t *testing.T) {
	var errOut bytes.Buffer
	p := &textPrinter{out: &bytes.Buffer{}, errOut: &errOut}
	p.Event(deploy.Event{Target: "pi2", Step: deploy.StepQuorum, Status: deploy.EventFail, Message: "held by \x1b]52;c;aGk=\x07bob@laptop\nsecond line"})
	if got := errOut.String(); strings.ContainsAny(got, "\x1b\x07") || !strings.Contains(got, "bob@laptop\nsecond line") {
		t.Errorf("printed %q", got)
	}
}
