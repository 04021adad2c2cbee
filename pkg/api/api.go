// Package api holds what the typed clients of Lucid's services share: the
// error answer every service gives ({"error":{"code","message"}}) and one
// request helper. The clients themselves are in its subpackages.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Error is an error answer of a Lucid service.
type Error struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	// RetryAfter is the answer's Retry-After in seconds, when it gave one.
	RetryAfter int `json:"-"`
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
	}
	// Not a Lucid error body (a proxy's page, a readiness report): the
	// status, and the start of the body.
	msg := e.Message
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), msg)
}

// ErrNotFound is matched by a 404 answer.
var ErrNotFound = errors.New("not found")

// Is makes errors.Is(err, ErrNotFound) true for a 404.
func (e *Error) Is(target error) bool {
	return target == ErrNotFound && e.Status == http.StatusNotFound
}

// DecodeError turns a non-2xx answer into an *Error.
func DecodeError(resp *http.Response) error {
	var body struct {
		Error Error `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if json.Unmarshal(data, &body) != nil || body.Error.Code == "" {
		return &Error{Status: resp.StatusCode, Message: strings.TrimSpace(string(data)), RetryAfter: max(retry, 0)}
	}
	body.Error.Status, body.Error.RetryAfter = resp.StatusCode, max(retry, 0)
	return &body.Error
}

// Request describes one call.
type Request struct {
	Method      string
	URL         string
	Body        []byte
	ContentType string // default application/json when Body is set
	Token       string // bearer token, if any
}

// Do sends r and decodes a 2xx answer into out: nil discards it, *[]byte
// takes the raw body (up to MaxRawAnswer), anything else is JSON. Other answers
// are *Error.
func Do(ctx context.Context, hc *http.Client, r Request, out any) error {
	var body io.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URL, body)
	if err != nil {
		return err
	}
	if r.Body != nil {
		ct := r.ContentType
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return DecodeError(resp)
	}
	switch v := out.(type) {
	case nil:
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	case *[]byte:
		*v, err = io.ReadAll(io.LimitReader(resp.Body, MaxRawAnswer+1))
		if err == nil && len(*v) > MaxRawAnswer {
			*v, err = nil, fmt.Errorf("%s %s: the answer is over %d MiB", r.Method, r.URL, MaxRawAnswer>>20)
		}
		return err
	default:
		return json.NewDecoder(resp.Body).Decode(out)
	}
}

// MaxRawAnswer bounds an answer read whole as bytes: a block, the largest
// (its transactions are at most 32 MiB), with room for its encoding.
const MaxRawAnswer = 48 << 20

// WithBearer returns a transport that sends token as the bearer credential
// of every request (through the gateway, say), on top of base (nil: the
// default transport). A redirect to another host does not get it: the
// client copies a header set on the first request to the same host only,
// and a transport sees each request of the chain as new.
func WithBearer(base http.RoundTripper, token string) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return bearer{base, "Bearer " + token}
}

type bearer struct {
	base   http.RoundTripper
	header string
}

func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Authorization") == "" && req.URL.Host == firstOfRedirects(req).URL.Host {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", b.header)
	}
	return b.base.RoundTrip(req)
}

// firstOfRedirects is the request a chain of redirects that led to req
// began with (req itself when it is not a redirect's).
func firstOfRedirects(req *http.Request) *http.Request {
	for req.Response != nil && req.Response.Request != nil {
		req = req.Response.Request
	}
	return req
}
