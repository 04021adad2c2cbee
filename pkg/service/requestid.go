package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
)

// HeaderRequestID carries a request's ID between client, gateway and
// services. It is spelt as http.Header stores it (names are
// case-insensitive on the wire), so it indexes a Header directly.
const HeaderRequestID = "X-Request-Id"

// requestInfo is what a request's context carries about it: its ID and,
// once identify has run, who made it. One value, set once by the outermost
// middleware, so that the handlers inside see the same *http.Request (a
// copy made with WithContext would hide the pattern the mux sets from the
// metrics and log around it).
type requestInfo struct {
	id  string
	who *identity
}

type requestInfoKey struct{}

func requestInfoOf(ctx context.Context) *requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return ri
}

// RequestID returns the request ID stored in ctx, or "".
func RequestID(ctx context.Context) string {
	if ri := requestInfoOf(ctx); ri != nil {
		return ri.id
	}
	return ""
}

// WithRequestID returns a context carrying id.
func WithRequestID(ctx context.Context, id string) context.Context {
	ri := &requestInfo{id: id}
	if old := requestInfoOf(ctx); old != nil {
		ri.who = old.who
	}
	return context.WithValue(ctx, requestInfoKey{}, ri)
}

// RequestContext is a context carrying a request ID, as WithRequestID's
// does, that its owner keeps in a value of its own: the gateway keeps one
// in each pooled call, so that its hot path makes no context per request.
// It must not be used once Reset for another request.
type RequestContext struct {
	context.Context
	info requestInfo
}

// Reset makes c carry id over parent.
func (c *RequestContext) Reset(parent context.Context, id string) {
	c.Context, c.info = parent, requestInfo{id: id}
}

// Value answers the request ID's key itself, and any other from its parent.
func (c *RequestContext) Value(key any) any {
	if _, ok := key.(requestInfoKey); ok {
		return &c.info
	}
	if c.Context == nil { // zero, or after its owner reset it
		return nil
	}
	return c.Context.Value(key)
}

// NewRequestID returns a fresh random request ID (128 bits, hex).
func NewRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// ValidRequestID accepts an incoming ID only when it is short and made of
// characters that are safe in logs and headers.
func ValidRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

// requestIDMiddleware keeps a well-formed incoming X-Request-ID, or makes a
// new one, and puts it in the context and the response.
func requestIDMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var id string
		if v := r.Header[HeaderRequestID]; len(v) > 0 {
			id = v[0]
		}
		if !ValidRequestID(id) {
			id = NewRequestID()
		}
		w.Header()[HeaderRequestID] = []string{id}
		next.ServeHTTP(w, r.WithContext(WithRequestID(r.Context(), id)))
	})
}
