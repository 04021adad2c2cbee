package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
)

// Error codes shared by every service (DESIGN.md, "The gateway").
const (
	CodeBadRequest = "LUCID_ERR_1001"
	CodeNotFound   = "LUCID_ERR_1004"
	CodeConflict   = "LUCID_ERR_1009"
	CodeTooLarge   = "LUCID_ERR_1013"
	CodeAuth       = "LUCID_ERR_2001"
	CodeForbidden  = "LUCID_ERR_2003"
	CodeRateLimit  = "LUCID_ERR_3001"
	CodeInternal   = "LUCID_ERR_5000"
	CodeUnready    = "LUCID_ERR_5003"
)

// HTTPError is an error with the status, code and short message a client
// sees. Its cause, if any, is logged and never sent.
type HTTPError struct {
	Status  int
	Code    string
	Message string
	// Fields, when set, lists field-level problems (it is sent as
	// error.fields).
	Fields any
	// RetryAfter, when positive, is sent as Retry-After (seconds).
	RetryAfter int
	Cause      error
}

func (e *HTTPError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%d %s: %s: %v", e.Status, e.Code, e.Message, e.Cause)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

func (e *HTTPError) Unwrap() error { return e.Cause }

// Errorf returns an HTTPError with a formatted client message.
func Errorf(status int, code, format string, args ...any) *HTTPError {
	return &HTTPError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorBody is the JSON error shape of DESIGN.md.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Fields  any    `json:"fields,omitempty"`
	} `json:"error"`
	RequestID string `json:"request_id,omitempty"`
}

// WriteError writes err as a JSON error response. An error that is not an
// HTTPError becomes a 500 whose detail stays in the log.
func WriteError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	var he *HTTPError
	if !errors.As(err, &he) {
		he = &HTTPError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", Cause: err}
	}
	level := slog.LevelInfo
	if he.Status >= 500 {
		level = slog.LevelError
	}
	logger.Log(r.Context(), level, "request failed", "method", r.Method, "path", LogPath(r.URL.Path), "status", he.Status, "code", he.Code, "error", err)
	writeErrorBody(w, r, he)
}

func writeErrorBody(w http.ResponseWriter, r *http.Request, he *HTTPError) {
	if he.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(he.RetryAfter))
	}
	_, body := ErrorResponse(he, RequestID(r.Context()))
	WriteJSONBytes(w, he.Status, body)
}

// WriteJSON writes v as a JSON response with status. HTML escaping is off
// so that embedded canonical JSON (transactions in blocks) keeps its exact
// bytes; the content type and nosniff keep browsers from reading it as HTML.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	jsonHeader(w, status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the client went away; nothing to do
}

// WriteJSONBytes writes an encoded JSON body with status: a document
// stored encoded (a block), sent as it is.
func WriteJSONBytes(w http.ResponseWriter, status int, body []byte) {
	jsonHeader(w, status)
	_, _ = w.Write(body) // the client went away; nothing to do
}

// jsonHeader sends the status with a JSON content type that browsers may
// not sniff as HTML.
func jsonHeader(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
}

// HandlerFunc is an HTTP handler that returns its error instead of writing
// it, so every failure is answered and logged the same way.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error
