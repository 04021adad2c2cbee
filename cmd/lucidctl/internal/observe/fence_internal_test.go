package observe

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/api/engineapi"
)

// TestStatusShowsTheFence: a fenced engine and an accepted fork each get a
// line of `status --target`; an engine never fenced gets none.
func TestStatusShowsTheFence(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	st := io.OutStyles()
	at := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	printFence(&buf, st, nil)
	if buf.Len() != 0 {
		t.Errorf("no fence printed %q", buf.String())
	}
	printFence(&buf, st, &engineapi.FenceStatus{
		Fenced: true, Height: 40, GuardedHeight: 41,
		Fence: &engineapi.Fence{Reason: "restored", Backup: "b-7", RestoredHeight: 40, At: at},
		Forks: []engineapi.ForkNote{{From: 12, To: 15, At: at, By: "alice@laptop"}},
	})
	for _, want := range []string{
		"fence:      FENCED after a restore: producing no block (backup b-7 restored at height 40; holds 40, can re-propose to 41)",
		"fork:       heights 12..15 void: a fork accepted 2026-12-05T14:00:00Z by alice@laptop",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, buf.String())
		}
	}
}
