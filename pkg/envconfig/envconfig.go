// Package envconfig reads a service's configuration from environment
// variables with typed validation.
//
// A Reader collects every problem instead of stopping at the first, so a
// service that is misconfigured in three ways says so once, at start, naming
// each variable. Secret values never appear in its errors.
package envconfig

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Lookup finds an environment variable, like os.LookupEnv.
type Lookup func(key string) (string, bool)

// OS looks variables up in the process environment.
var OS Lookup = os.LookupEnv

// Map looks variables up in m; tests use it.
func Map(m map[string]string) Lookup {
	return func(key string) (string, bool) {
		v, ok := m[key]
		return v, ok
	}
}

// A Reader reads typed values and remembers what was wrong with them.
type Reader struct {
	lookup Lookup
	errs   []error
}

// New returns a Reader over lookup.
func New(lookup Lookup) *Reader {
	if lookup == nil {
		lookup = OS
	}
	return &Reader{lookup: lookup}
}

// Err returns every problem found so far, joined, or nil.
func (r *Reader) Err() error { return errors.Join(r.errs...) }

// Fail records a problem with key found by the caller's own checks.
func (r *Reader) Fail(key, format string, args ...any) { r.fail(key, format, args...) }

func (r *Reader) fail(key, format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

// value returns the trimmed value of key, or "" when unset or blank.
func (r *Reader) value(key string) string {
	v, _ := r.lookup(key)
	return strings.TrimSpace(v)
}

// String returns key's value, or def when it is unset or empty.
func (r *Reader) String(key, def string) string {
	if v := r.value(key); v != "" {
		return v
	}
	return def
}

// Required returns key's value and records an error when it is unset or empty.
func (r *Reader) Required(key, why string) string {
	v := r.value(key)
	if v == "" {
		r.fail(key, "is required (%s)", why)
	}
	return v
}

// Secret returns a required secret of at least minLen bytes. Its value never
// appears in an error.
func (r *Reader) Secret(key string, minLen int, why string) string {
	v, _ := r.lookup(key)
	switch {
	case v == "":
		r.fail(key, "is required (%s)", why)
	case len(v) < minLen:
		r.fail(key, "is %d bytes; at least %d are required", len(v), minLen)
	}
	return v
}

// Int returns key's value as an integer in [lo, hi], or def when unset.
func (r *Reader) Int(key string, def, lo, hi int) int {
	v := r.value(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.fail(key, "%q is not a whole number", v)
		return def
	}
	if n < lo || n > hi {
		r.fail(key, "%d is outside %d..%d", n, lo, hi)
		return def
	}
	return n
}

// Duration returns key's value as a Go duration ("15s", "2m") in [lo, hi],
// or def when unset.
func (r *Reader) Duration(key string, def, lo, hi time.Duration) time.Duration {
	v := r.value(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		r.fail(key, "%q is not a duration such as 15s or 2m", v)
		return def
	}
	if d < lo || d > hi {
		r.fail(key, "%s is outside %s..%s", d, lo, hi)
		return def
	}
	return d
}

// Bool returns key's value as a boolean, or def when unset.
func (r *Reader) Bool(key string, def bool) bool {
	v := r.value(key)
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.fail(key, "%q is not true or false", v)
		return def
	}
	return b
}

// ListenAddr returns key's value as a host:port listen address (the host may
// be empty), or def when unset.
func (r *Reader) ListenAddr(key, def string) string {
	v := r.value(key)
	if v == "" {
		return def
	}
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		r.fail(key, "%q is not host:port (for example :8080 or 127.0.0.1:8080)", v)
		return def
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		r.fail(key, "%q has no valid port", v)
		return def
	}
	return v
}

// URL returns key's value as an absolute http(s) URL, or nil when unset.
// The URL's user info is left out of any error, since it may hold a password.
func (r *Reader) URL(key string) *url.URL {
	v := r.value(key)
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Host == "" {
		r.fail(key, "is not an absolute URL")
		return nil
	}
	return u
}

// URLList returns key's value as a comma-separated list of absolute
// URLs, or def when unset.
func (r *Reader) URLList(key, def string) string {
	v := r.value(key)
	if v == "" {
		return def
	}
	for _, part := range strings.Split(v, ",") {
		if u, err := url.Parse(strings.TrimSpace(part)); err != nil || u.Host == "" {
			r.fail(key, "%q is not a comma-separated list of absolute URLs", v)
			return def
		}
	}
	return v
}

// OneOf returns key's value when it is one of allowed, or def when unset.
func (r *Reader) OneOf(key, def string, allowed ...string) string {
	v := r.value(key)
	if v == "" {
		return def
	}
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a
		}
	}
	r.fail(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	return def
}
