package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/benchtarget"
)

// Flag values no run can use are usage errors (exit 2), a mistyped
// scenario with the one meant.
func TestOptionMistakesAreUsageErrors(t *testing.T) {
	good := func() *Options {
		return &Options{Scenarios: benchtarget.Scenarios, Duration: 10 * time.Second, Concurrency: 32, Rate: 100, Anchors: 100, Blocks: 20}
	}
	if err := checkOptions(good()); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	tests := map[string]struct {
		change func(*Options)
		want   string
	}{
		"scenario":    {func(o *Options) { o.Scenarios = []string{"gateway-latnecy"} }, `did you mean "gateway-latency"?`},
		"duration":    {func(o *Options) { o.Duration = 0 }, "--duration"},
		"concurrency": {func(o *Options) { o.Concurrency = 0 }, "--concurrency"},
		"rate":        {func(o *Options) { o.Rate = -1 }, "--rate"},
		"anchors":     {func(o *Options) { o.Anchors = 0 }, "--anchors"},
		"blocks":      {func(o *Options) { o.Blocks = 1 }, "--blocks"},
	}
	for name, tt := range tests {
		o := good()
		tt.change(o)
		err := checkOptions(o)
		if !cli.IsUsage(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a usage error containing %q", name, err, tt.want)
		}
	}
}
