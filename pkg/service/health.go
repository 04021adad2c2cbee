package service

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/buildinfo"
)

// Check reports whether one dependency is usable. It must honour ctx.
type Check func(ctx context.Context) error

type namedCheck struct {
	name  string
	check func(ctx context.Context) (string, error)
}

// DetailedCheck is a Check that also says something worth showing on
// /ready (which mode it is in, what it sees).
type DetailedCheck func(ctx context.Context) (detail string, err error)

// CheckResult is one dependency's line in the /ready answer.
type CheckResult struct {
	Name       string  `json:"name"`
	Status     string  `json:"status"` // "ok" or "fail"
	Error      string  `json:"error,omitempty"`
	Detail     string  `json:"detail,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// Readiness is the /ready answer.
type Readiness struct {
	Service string        `json:"service"`
	Status  string        `json:"status"` // "ready", "not_ready" or "draining"
	Checks  []CheckResult `json:"checks"`
}

// Health is the /health answer.
type Health struct {
	Service string `json:"service"`
	Status  string `json:"status"`
	Version string `json:"version"`
}

// checkTimeout bounds each readiness check so /ready answers promptly even
// when a dependency hangs.
const checkTimeout = 2 * time.Second

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) error {
	WriteJSON(w, http.StatusOK, Health{Service: s.cfg.Name, Status: "ok", Version: buildinfo.Read().Version})
	return nil
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) error {
	// Anyone may ask a public listener's /ready, and any container on the
	// Pi's network an internal one's, and each run of the checks may cost
	// a dependency a call (the gateway's Redis with limits failing
	// closed; the engine, for anchoring and the block manager):
	// concurrent callers share the run in progress, so a flood of them
	// makes one call at a time. The run outlives a caller that leaves;
	// each check is still bounded by checkTimeout.
	run := s.readyRuns.DoChan("ready", func() (any, error) {
		return s.Ready(context.WithoutCancel(r.Context())), nil
	})
	var rd Readiness
	select {
	case res := <-run:
		rd = res.Val.(Readiness)
	case <-r.Context().Done():
		return nil
	}
	status := http.StatusOK
	if rd.Status != "ready" {
		status = http.StatusServiceUnavailable
	}
	if s.cfg.Public {
		// A public listener answers anyone: names and status only, no
		// internal addresses or error text. The log keeps what failed.
		s.logFailures(rd)
		rd = rd.public()
	}
	WriteJSON(w, status, rd)
	return nil
}

// public is rd without the checks' details and errors.
func (rd Readiness) public() Readiness {
	checks := make([]CheckResult, len(rd.Checks))
	for i, c := range rd.Checks {
		c.Detail, c.Error = "", ""
		checks[i] = c
	}
	rd.Checks = checks
	return rd
}

// logFailures logs a check's error when it starts failing or fails
// differently, and when it passes again: once per change, not per probe.
func (s *Server) logFailures(rd Readiness) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastFailure == nil {
		s.lastFailure = map[string]string{}
	}
	for _, c := range rd.Checks {
		last, failed := s.lastFailure[c.Name]
		switch {
		case c.Status != "ok" && (!failed || last != c.Error):
			s.lastFailure[c.Name] = c.Error
			s.logger.Warn("readiness check failing", "check", c.Name, "error", c.Error, "detail", c.Detail)
		case c.Status == "ok" && failed:
			delete(s.lastFailure, c.Name)
			s.logger.Info("readiness check passing again", "check", c.Name, "detail", c.Detail)
		}
	}
}

// Ready runs every readiness check concurrently and reports the result.
func (s *Server) Ready(ctx context.Context) Readiness {
	s.mu.Lock()
	checks := append([]namedCheck(nil), s.checks...)
	s.mu.Unlock()

	results := make([]CheckResult, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			start := time.Now()
			detail, err := c.check(cctx)
			res := CheckResult{Name: c.name, Status: "ok", Detail: detail, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				res.Status, res.Error = "fail", err.Error()
			}
			results[i] = res
		}()
	}
	wg.Wait()

	rd := Readiness{Service: s.cfg.Name, Status: "ready", Checks: results}
	for _, res := range results {
		if res.Status != "ok" {
			rd.Status = "not_ready"
		}
	}
	if s.draining.Load() {
		rd.Status = "draining"
	}
	return rd
}
