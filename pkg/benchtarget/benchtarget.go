// Package benchtarget holds the thresholds `lucidctl bench` holds a stack
// to: the Phase 2 targets and the goals lucid.yaml's bench section may set.
// Each threshold is written here once; the text users see (a check's
// "want", the help, the docs table) is derived from it.
package benchtarget

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Scenarios, in the order they run.
const (
	GatewayThroughput   = "gateway-throughput"
	GatewayLatency      = "gateway-latency"
	BlockInterval       = "block-interval"
	AnchoringThroughput = "anchoring-throughput"
	QueryLatency        = "query-latency"
	MeshOverhead        = "mesh-overhead"
)

// Scenarios lists every scenario in the order they run.
var Scenarios = []string{GatewayThroughput, GatewayLatency, BlockInterval, AnchoringThroughput, QueryLatency, MeshOverhead}

// Comparison is how a measured value must stand to its threshold.
type Comparison int

// The comparisons.
const (
	Above   Comparison = iota // value > threshold
	AtLeast                   // value >= threshold
	Below                     // value < threshold
	AtMost                    // value <= threshold
)

// Symbol is the comparison as users read it.
func (c Comparison) Symbol() string {
	switch c {
	case Above:
		return ">"
	case AtLeast:
		return ">="
	case Below:
		return "<"
	default:
		return "<="
	}
}

// Holds reports whether value stands to threshold as c says.
func (c Comparison) Holds(value, threshold float64) bool {
	switch c {
	case Above:
		return value > threshold
	case AtLeast:
		return value >= threshold
	case Below:
		return value < threshold
	default:
		return value <= threshold
	}
}

// Metric names one measured value: a scenario and the metric's name in
// its results.
type Metric struct {
	Scenario string
	Name     string
}

// Target is a threshold one metric is held to.
type Target struct {
	Metric
	Comparison Comparison
	Threshold  float64
	Unit       string // "ms", "req/s"; what the threshold counts
	Source     string // whose target: "Phase 2", "lucid.yaml goal"
}

// Met reports whether value meets the target.
func (t Target) Met(value float64) bool { return t.Comparison.Holds(value, t.Threshold) }

// Bound is the target without its source: "p95 < 10 ms" reads
// "< 10 ms".
func (t Target) Bound() string {
	s := t.Comparison.Symbol() + " " + strconv.FormatFloat(t.Threshold, 'g', -1, 64)
	if t.Unit != "" {
		s += " " + t.Unit
	}
	return s
}

// Want is the target as a check shows it: "< 10 ms (Phase 2)".
func (t Target) Want() string {
	if t.Source == "" {
		return t.Bound()
	}
	return t.Bound() + " (" + t.Source + ")"
}

// Phase2Source names the Phase 2 document's targets.
const Phase2Source = "Phase 2"

// The Phase 2 document's targets: gateway > 500 req/s sustained, database
// queries p95 < 10 ms, mesh overhead < 5 ms, a block per 10 s. Its query
// target also holds the gateway's own latency.
var (
	Phase2GatewayThroughput = Target{Metric{GatewayThroughput, "requests_per_second"}, Above, 500, "req/s", Phase2Source}
	Phase2GatewayLatency    = Target{Metric{GatewayLatency, "p95_ms"}, Below, 10, "ms", Phase2Source}
	Phase2BlockLookup       = Target{Metric{QueryLatency, "block_p95_ms"}, Below, 10, "ms", Phase2Source}
	Phase2AnchorLookup      = Target{Metric{QueryLatency, "anchor_p95_ms"}, Below, 10, "ms", Phase2Source}
	Phase2ProofLookup       = Target{Metric{QueryLatency, "proof_p95_ms"}, Below, 10, "ms", Phase2Source}
	Phase2MeshOverhead      = Target{Metric{MeshOverhead, "overhead_p50_ms"}, Below, 5, "ms", Phase2Source}
)

// Phase2 lists the fixed Phase 2 targets; the block interval's depends on
// the chain's configured interval (BlockIntervalTarget).
var Phase2 = []Target{Phase2GatewayThroughput, Phase2GatewayLatency, Phase2BlockLookup, Phase2AnchorLookup, Phase2ProofLookup, Phase2MeshOverhead}

// The block interval: the Phase 2 document's, and how far the mean may
// stray from the configured one.
const (
	Phase2BlockInterval    = 10 * time.Second
	BlockIntervalTolerance = 0.05
)

// BlockIntervalTolerancePercent is the tolerance as users read it.
func BlockIntervalTolerancePercent() string {
	return strconv.FormatFloat(BlockIntervalTolerance*100, 'g', -1, 64) + " %"
}

// BlockIntervalWant is the mean block interval's target for a chain
// configured with interval, in seconds.
func BlockIntervalWant(interval float64) string {
	return fmt.Sprintf("%g s ± %s (the configured interval; %s: a block per %g s)",
		interval, BlockIntervalTolerancePercent(), Phase2Source, Phase2BlockInterval.Seconds())
}

// BlockIntervalMet reports whether a mean interval meets the target for
// a chain configured with interval (both in seconds).
func BlockIntervalMet(mean, interval float64) bool {
	return math.Abs(mean-interval) <= interval*BlockIntervalTolerance
}

// GoalSource names lucid.yaml's goals.
const GoalSource = "lucid.yaml goal"

// Goal is a goal lucid.yaml's bench section may set: its key there, and
// the metrics it holds. Zero, or no key, sets no goal.
type Goal struct {
	Key        string
	Comparison Comparison
	Unit       string
	Metrics    []Metric
}

// Target is the goal set to threshold, for one of its metrics.
func (g Goal) Target(m Metric, threshold float64) Target {
	return Target{Metric: m, Comparison: g.Comparison, Threshold: threshold, Unit: g.Unit, Source: GoalSource}
}

// Goals are the keys of lucid.yaml's bench section.
var Goals = []Goal{
	{Key: "gateway_rps", Comparison: AtLeast, Unit: "req/s", Metrics: []Metric{Phase2GatewayThroughput.Metric}},
	{Key: "gateway_p95_ms", Comparison: AtMost, Unit: "ms", Metrics: []Metric{Phase2GatewayLatency.Metric}},
	{Key: "query_p95_ms", Comparison: AtMost, Unit: "ms", Metrics: []Metric{Phase2BlockLookup.Metric, Phase2AnchorLookup.Metric, Phase2ProofLookup.Metric}},
	{Key: "mesh_overhead_ms", Comparison: AtMost, Unit: "ms", Metrics: []Metric{Phase2MeshOverhead.Metric}},
	// From submission until sealed.
	{Key: "anchors_per_second", Comparison: AtLeast, Unit: "anchors/s", Metrics: []Metric{{AnchoringThroughput, "sealed_per_second"}}},
}

// GoalKeys lists the keys of Goals, in order.
func GoalKeys() []string {
	keys := make([]string, len(Goals))
	for i, g := range Goals {
		keys[i] = g.Key
	}
	return keys
}
