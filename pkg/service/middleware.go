package service

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"
	"unicode/utf8"
)

// statusWriter records the status and size of a response. It unwraps for
// http.ResponseController and passes Flush through, so streaming handlers
// behind it keep working.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument logs each request and feeds the metrics. It sits outside the
// mux so that it sees the matched pattern after the mux has run.
func instrument(logger *slog.Logger, m *httpMetrics, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		m.inflight.Inc()
		defer m.inflight.Dec()
		// recoverPanics runs inside, so no panic but an intended abort
		// reaches here; no deferred closure is needed (it would cost an
		// allocation per request on the proxy's hot path).
		next.ServeHTTP(sw, r)
		elapsed := time.Since(start)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		m.observe(r, status, elapsed)
		level := slog.LevelInfo
		if r.Pattern == "GET /health" || r.Pattern == "GET /ready" || r.Pattern == "GET /metrics" {
			level = slog.LevelDebug // probes would drown the log
		}
		if logger.Enabled(r.Context(), level) {
			logger.Log(r.Context(), level, "request",
				"method", r.Method, "path", LogPath(r.URL.Path), "route", route(r),
				"status", status, "bytes", sw.bytes, "duration_ms", float64(elapsed.Microseconds())/1000,
				"remote", r.RemoteAddr)
		}
	})
}

// MaxLoggedPath is how much of a request's path a log record keeps: a
// path may be tens of kilobytes, and a record is written for every
// request, refused ones too, which anyone who reaches a port can send.
const MaxLoggedPath = 256

// LogPath is path as a log record keeps it: whole up to MaxLoggedPath
// bytes, else cut there (on a character's boundary) and marked with how
// much was left out.
func LogPath(path string) string {
	if len(path) <= MaxLoggedPath {
		return path
	}
	// Back to the start of the character cut, if any: at most
	// UTFMax-1 bytes, so that bytes that start no character (a path is
	// any bytes) do not take the readable start with them.
	n := MaxLoggedPath
	for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(path[n]); i++ {
		n--
	}
	return path[:n] + "…(+" + strconv.Itoa(len(path)-n) + " bytes)"
}

// recoverPanics turns a handler panic into a logged 500 instead of a dropped
// connection. http.ErrAbortHandler is re-raised: it is how a handler asks the
// server to abort a response on purpose.
func recoverPanics(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			logger.ErrorContext(r.Context(), "handler panicked", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if sw, ok := w.(*statusWriter); ok && sw.status != 0 {
				panic(http.ErrAbortHandler) // headers are out; only aborting tells the client
			}
			writeErrorBody(w, r, Errorf(http.StatusInternalServerError, CodeInternal, "internal error"))
		}()
		next.ServeHTTP(w, r)
	})
}
