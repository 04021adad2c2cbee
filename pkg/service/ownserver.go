package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Serving is implemented by an app that serves its listener itself rather
// than through the Server's net/http server: the gateway, whose hot path
// runs on fasthttp. MainOn then calls ServeOn instead of Serve. The
// Server's own endpoints (/health, /ready, /metrics) stay in its Handler,
// for the app to route to; ServeOn must drain within the configured
// shutdown timeout once ctx ends, and call Drain first so /ready says so.
type Serving interface {
	ServeOn(ctx context.Context, ln net.Listener, srv *Server) error
}

// Listen opens the configured address (LUCID_ADDR).
func (s *Server) Listen(ctx context.Context) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return ln, nil
}

// Drain makes /ready report "draining": the server is shutting down.
func (s *Server) Drain() { s.draining.Store(true) }

// ObserveRequest feeds the request metrics every service exports
// (lucid_http_requests_total and lucid_http_request_duration_seconds) for
// a request an app served itself; route is a bounded label, never a raw
// path.
func (s *Server) ObserveRequest(route, method string, status int, elapsed time.Duration) {
	s.metrics.observeRoute(route, method, status, elapsed)
}

// InFlight is the gauge of requests being served
// (lucid_http_requests_in_flight), for requests an app serves itself.
func (s *Server) InFlight() prometheus.Gauge { return s.metrics.inflight }

// ErrorResponse is what WriteError would answer for err: the HTTPError
// (an error that is not one becomes a 500 whose detail is only for the
// log) and the JSON body, for an app that writes responses itself.
func ErrorResponse(err error, requestID string) (*HTTPError, []byte) {
	var he *HTTPError
	if !errors.As(err, &he) {
		he = &HTTPError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", Cause: err}
	}
	var body errorBody
	body.Error.Code = he.Code
	body.Error.Message = he.Message
	body.Error.Fields = he.Fields
	body.RequestID = requestID
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(body) // strings and a service's own field list: it encodes
	return he, buf.Bytes()
}
