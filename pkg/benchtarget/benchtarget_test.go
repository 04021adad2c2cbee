package benchtarget

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// The text users see comes from the threshold, and the threshold decides.
func TestTargetText(t *testing.T) {
	tests := []struct {
		target   Target
		want     string
		met, not float64
	}{
		{Phase2GatewayThroughput, "> 500 req/s (Phase 2)", 501, 500},
		{Phase2GatewayLatency, "< 10 ms (Phase 2)", 9.9, 10},
		{Phase2MeshOverhead, "< 5 ms (Phase 2)", 4.9, 5},
		{Goals[0].Target(Phase2GatewayThroughput.Metric, 5000), ">= 5000 req/s (lucid.yaml goal)", 5000, 4999},
		{Goals[1].Target(Phase2GatewayLatency.Metric, 2.5), "<= 2.5 ms (lucid.yaml goal)", 2.5, 2.6},
	}
	for _, tt := range tests {
		if got := tt.target.Want(); got != tt.want {
			t.Errorf("Want() = %q, want %q", got, tt.want)
		}
		if !tt.target.Met(tt.met) || tt.target.Met(tt.not) {
			t.Errorf("%s: met by %g and not by %g, got the reverse", tt.want, tt.met, tt.not)
		}
	}
	if got := BlockIntervalWant(2); got != "2 s ± 5 % (the configured interval; Phase 2: a block per 10 s)" {
		t.Errorf("BlockIntervalWant(2) = %q", got)
	}
	if !BlockIntervalMet(2.09, 2) || !BlockIntervalMet(1.91, 2) || BlockIntervalMet(2.11, 2) {
		t.Error("the block interval's tolerance is not 5 %")
	}
}

// Every target and goal names a scenario that runs, and goal keys are
// unique.
func TestTargetsNameScenarios(t *testing.T) {
	var ms []Metric
	for _, tg := range Phase2 {
		ms = append(ms, tg.Metric)
	}
	for _, g := range Goals {
		ms = append(ms, g.Metrics...)
	}
	for _, m := range ms {
		if !slices.Contains(Scenarios, m.Scenario) || m.Name == "" {
			t.Errorf("%+v names no scenario", m)
		}
	}
	keys := GoalKeys()
	slices.Sort(keys)
	if len(slices.Compact(keys)) != len(Goals) {
		t.Errorf("goal keys repeat: %v", GoalKeys())
	}
}

// docs/bench.md's table and goals say what is defined here.
func TestDocsFollowTheTargets(t *testing.T) {
	data, err := os.ReadFile("../../docs/bench.md")
	if err != nil {
		t.Fatal(err)
	}
	row := func(scenario string) string {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "| `"+scenario+"` |") {
				return line
			}
		}
		t.Errorf("docs/bench.md has no row for %s", scenario)
		return ""
	}
	for _, tg := range Phase2 {
		if r := row(tg.Scenario); !strings.Contains(r, "`"+tg.Name+"`") || !strings.Contains(r, tg.Want()) {
			t.Errorf("docs/bench.md's %s row does not say %s %s:\n%s", tg.Scenario, tg.Name, tg.Want(), r)
		}
	}
	interval := fmt.Sprintf("± %s (%s: a block per %g s)", BlockIntervalTolerancePercent(), Phase2Source, Phase2BlockInterval.Seconds())
	if r := row(BlockInterval); !strings.Contains(r, interval) {
		t.Errorf("docs/bench.md's %s row does not say %s:\n%s", BlockInterval, interval, r)
	}
	for _, k := range GoalKeys() {
		if !strings.Contains(string(data), "\n  "+k+": ") {
			t.Errorf("docs/bench.md's goals lack %s", k)
		}
	}
}
