// Package loadgen drives load at a service and measures it: closed-loop
// (a fixed number of workers, each sending its next request when the last
// answered) or open-loop (requests started at a fixed rate whatever the
// answers do). Latencies go to an HdrHistogram. In open loop a request's
// latency is counted from when it was due, not from when a worker got to
// it, so a server that stalls cannot hide the queue it caused (no
// coordinated omission).
package loadgen

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Options describe one run.
type Options struct {
	// Do sends one request; worker is its worker's number (for per-worker
	// credentials).
	Do func(ctx context.Context, worker int) error
	// Concurrency is the number of workers (closed loop), or the most
	// requests in flight (open loop). Default 16.
	Concurrency int
	// Rate, when set, runs open loop at that many requests per second.
	Rate float64
	// Duration bounds the run (ctx ending stops it sooner; the result
	// covers what ran).
	Duration time.Duration
	// Progress, if set, is told the running totals about once a second.
	Progress func(Snapshot)
}

// Snapshot is a run so far.
type Snapshot struct {
	Elapsed  time.Duration
	Requests int64
	Errors   int64
}

// Result is a finished run.
type Result struct {
	Requests   int64         `json:"requests"`
	Errors     int64         `json:"errors"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	Throughput float64       `json:"requests_per_second"`
	P50        time.Duration `json:"p50_ns"`
	P95        time.Duration `json:"p95_ns"`
	P99        time.Duration `json:"p99_ns"`
	Max        time.Duration `json:"max_ns"`
	// PerSecond counts the requests finished in each whole second of the
	// run.
	PerSecond []int64 `json:"per_second"`
	// Histogram holds every latency, in microseconds.
	Histogram *hdrhistogram.Histogram `json:"-"`
	// FirstError is the first failure's message, if any.
	FirstError string `json:"first_error,omitempty"`
}

// errStalled marks a request the run ended while it waited (due for over
// stallAfter): the server stalled.
var errStalled = errors.New("still waiting at the end of the run: the server stalled")

// stallAfter is how long a request must have waited, when the run ends
// before it is answered or even sent, to count as a stall. One due more
// recently is left out, as one cut off in a closed loop is: the end of the
// run, or a busy machine handing it out late, is not the server's doing.
const stallAfter = time.Second

// Latency range the histogram keeps: 1 µs to 1 minute, 3 significant digits.
const (
	minMicros = 1
	maxMicros = 60_000_000
	sigFigs   = 3
)

// Run drives the load until Duration passes or ctx ends.
func Run(ctx context.Context, o Options) Result {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	var requests, errs atomic.Int64
	var firstErr atomic.Value
	secs := int(o.Duration/time.Second) + 2
	perSecond := make([]atomic.Int64, secs)
	hists := make([]*hdrhistogram.Histogram, o.Concurrency)
	unsent := hdrhistogram.New(minMicros, maxMicros, sigFigs)
	record := func(w int, due time.Time, err error) {
		now := time.Now()
		// Clamped, never dropped: the worst latencies are the ones to keep.
		_ = hists[w].RecordValue(min(max(now.Sub(due).Microseconds(), minMicros), maxMicros))
		requests.Add(1)
		if err != nil {
			errs.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
		}
		if s := int(now.Sub(start) / time.Second); s < secs {
			perSecond[s].Add(1)
		}
	}

	var progressDone chan struct{}
	if o.Progress != nil {
		progressDone = make(chan struct{})
		go func() {
			defer close(progressDone)
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					o.Progress(Snapshot{Elapsed: time.Since(start), Requests: requests.Load(), Errors: errs.Load()})
				}
			}
		}()
	}

	var wg sync.WaitGroup
	if o.Rate <= 0 {
		for w := range o.Concurrency {
			hists[w] = hdrhistogram.New(minMicros, maxMicros, sigFigs)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					t := time.Now()
					err := o.Do(ctx, w)
					if ctx.Err() != nil {
						return // cut off by the end of the run: not a measurement
					}
					record(w, t, err)
				}
			}()
		}
	} else {
		due := make(chan time.Time, o.Concurrency*4)
		for w := range o.Concurrency {
			hists[w] = hdrhistogram.New(minMicros, maxMicros, sigFigs)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for t := range due {
					err := o.Do(ctx, w)
					if ctx.Err() != nil {
						// Cut off by the end of the run. One that has waited
						// long is a stall the run must show, as a failure.
						if time.Since(t) > stallAfter {
							record(w, t, errStalled)
						}
						continue
					}
					record(w, t, err) // from when it was due
				}
			}()
		}
		interval := time.Duration(float64(time.Second) / o.Rate)
		next := 0 // the next slot to hand to a worker
	schedule:
		for ; ; next++ {
			at := start.Add(time.Duration(next) * interval)
			if d := time.Until(at); d > 0 {
				select {
				case <-ctx.Done():
					break schedule
				case <-time.After(d):
				}
			}
			select {
			case due <- at:
			case <-ctx.Done():
				break schedule
			}
		}
		close(due)
		// Slots that fell due long before the end but were never handed
		// out (every worker was held up) count too, as failures, with their
		// wait until the end.
		end := time.Now()
		for ; ; next++ {
			at := start.Add(time.Duration(next) * interval)
			if end.Sub(at) <= stallAfter {
				break
			}
			_ = unsent.RecordValue(min(max(end.Sub(at).Microseconds(), minMicros), maxMicros))
			requests.Add(1)
			errs.Add(1)
			firstErr.CompareAndSwap(nil, errStalled.Error())
		}
	}
	wg.Wait()
	if progressDone != nil {
		<-progressDone
	}

	elapsed := time.Since(start)
	h := hdrhistogram.New(minMicros, maxMicros, sigFigs)
	h.Merge(unsent)
	for _, x := range hists {
		h.Merge(x)
	}
	r := Result{Requests: requests.Load(), Errors: errs.Load(), Elapsed: elapsed, Histogram: h}
	if elapsed > 0 {
		r.Throughput = float64(r.Requests) / elapsed.Seconds()
	}
	us := func(q float64) time.Duration { return time.Duration(h.ValueAtQuantile(q)) * time.Microsecond }
	r.P50, r.P95, r.P99, r.Max = us(50), us(95), us(99), time.Duration(h.Max())*time.Microsecond
	for i := range perSecond {
		if i < int(elapsed/time.Second) { // whole seconds only: a partial one would look like a drop
			r.PerSecond = append(r.PerSecond, perSecond[i].Load())
		}
	}
	if v := firstErr.Load(); v != nil {
		r.FirstError = v.(string)
	}
	return r
}
