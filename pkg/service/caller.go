package service

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshtls"
)

// Who is calling. A request to a Lucid service comes from one of:
//
//   - another Lucid service, known by its mesh certificate (mTLS) or, with
//     the mesh off, by a signature made with the shared service key
//     (LUCID_SERVICE_KEY, header Lucid-Caller);
//   - the operator, with its credential for this service on this host
//     (derived from the operator token for the service's name and the
//     host's, auth.OperatorCredential) as a bearer token, checked against
//     its SHA-256 (LUCID_OPERATOR_TOKEN_SHA256), so no container holds the
//     token, nor another service's credential, nor its own service's on
//     another host;
//   - nobody known, who gets only /health, /ready and /metrics.
//
// A user is never a caller: users reach the services through the gateway,
// which passes the verified token's subject and tier on in X-Lucid-Sub and
// X-Lucid-Tier. A service believes those headers only from a caller that
// the catalog lets act for users towards it (catalog.MayActFor), and
// ignores them from anyone else, so nobody else can assert a principal.

// Headers of the identity a request carries between Lucid services.
const (
	// HeaderSub and HeaderTier carry the principal a request acts for.
	HeaderSub  = "X-Lucid-Sub"
	HeaderTier = "X-Lucid-Tier"
	// HeaderCaller carries the service signature of a request when the
	// mesh is off: "<service> <unix seconds> <hex HMAC-SHA256>".
	HeaderCaller = "Lucid-Caller"
)

// Principal is the user a request acts for: a verified token's subject and
// tier, as the gateway passed them on.
type Principal struct {
	Subject string
	Tier    auth.Tier
}

// identity is what the server established about a request.
type identity struct {
	caller    string // a Lucid service, or ""
	operator  bool
	principal *Principal
}

func identityOf(ctx context.Context) *identity {
	if ri := requestInfoOf(ctx); ri != nil {
		return ri.who
	}
	return nil
}

// CallerOf returns the Lucid service that made the request ctx belongs to.
func CallerOf(ctx context.Context) (string, bool) {
	if id := identityOf(ctx); id != nil && id.caller != "" {
		return id.caller, true
	}
	return "", false
}

// PrincipalOf returns the principal the request ctx belongs to acts for.
// Outgoing calls made with ctx (through Server.Client) pass it on to the
// services this one may act for users towards.
func PrincipalOf(ctx context.Context) (Principal, bool) {
	if id := identityOf(ctx); id != nil && id.principal != nil {
		return *id.principal, true
	}
	return Principal{}, false
}

// fromPublicDoor reports whether the request ctx belongs to came through
// the service that faces clients (catalog's Public: the gateway), which
// relays only users' requests: one without a principal is an anonymous
// user's (a public route), never that service's own.
func fromPublicDoor(ctx context.Context) bool {
	id := identityOf(ctx)
	if id == nil || id.caller == "" {
		return false
	}
	s, ok := catalog.Lookup(id.caller)
	return ok && s.Public
}

// IsOperator reports whether the request ctx belongs to carries the
// operator credential.
func IsOperator(ctx context.Context) bool {
	id := identityOf(ctx)
	return id != nil && id.operator
}

// WithPrincipal returns a context whose outgoing calls act for p: for
// programs that are not serving a request from the gateway, such as tests.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	id := &identity{principal: &p}
	ri := &requestInfo{who: id}
	if old := requestInfoOf(ctx); old != nil {
		ri.id = old.id
		if old.who != nil {
			id.caller, id.operator = old.who.caller, old.who.operator
		}
	}
	return context.WithValue(ctx, requestInfoKey{}, ri)
}

// callerSkew is how far a service signature's time may be from the
// receiver's clock: the services of one deployment share a host or NTP.
const callerSkew = 2 * time.Minute

// SignCaller returns the Lucid-Caller value by which service caller vouches,
// with the shared service key, for a request of method to the escaped path,
// made at now for principal p (nil: for no user). The signature binds all
// of them, so a value seen on the wire serves no other path, method,
// principal or service, and only for callerSkew; it does not bind the
// query or the body, so within that time it could be replayed with others.
// It is the guard of the mesh-off mode only: with the mesh on, mTLS
// identifies callers and encrypts the traffic.
func SignCaller(key []byte, caller string, now time.Time, method, path string, p *Principal) string {
	return NewCallerSigner(key, caller).Sign(now, method, path, p)
}

// CallerSigner signs requests of one service with one key, as SignCaller
// does, without keying HMAC anew for each: the gateway signs every request
// it forwards when the mesh is off.
type CallerSigner struct {
	caller string
	macs   sync.Pool // of *callerMAC, keyed HMAC-SHA256
}

// NewCallerSigner returns a signer for service caller with key.
func NewCallerSigner(key []byte, caller string) *CallerSigner {
	key = bytes.Clone(key)
	return &CallerSigner{caller: caller, macs: sync.Pool{New: func() any { return &callerMAC{h: hmac.New(sha256.New, key)} }}}
}

// Sign is SignCaller's value for a request of method to path at now for p.
func (s *CallerSigner) Sign(now time.Time, method, path string, p *Principal) string {
	var out [128]byte
	return string(s.AppendSign(out[:0], now, method, path, p))
}

// AppendSign appends Sign's value to dst, for a caller that copies it into
// a header of its own without a string in between.
func (s *CallerSigner) AppendSign(dst []byte, now time.Time, method, path string, p *Principal) []byte {
	var tsBuf [20]byte
	ts := strconv.AppendInt(tsBuf[:0], now.Unix(), 10)
	m := s.macs.Get().(*callerMAC)
	dst = append(dst, s.caller...)
	dst = append(dst, ' ')
	dst = append(dst, ts...)
	dst = append(dst, ' ')
	dst = hex.AppendEncode(dst, m.sum(s.caller, string(ts), method, path, p))
	s.macs.Put(m)
	return dst
}

// callerMAC computes signatures with a keyed HMAC. Its buffers are its
// own: a slice handed to the hash's interface methods would escape, and
// be allocated, on every request.
type callerMAC struct {
	h        hash.Hash
	msg, out []byte
}

// sum is the signature of the parts, valid until the next sum.
func (m *callerMAC) sum(caller, ts, method, path string, p *Principal) []byte {
	m.h.Reset()
	sub, tier := "-", "-"
	if p != nil {
		sub, tier = p.Subject, string(p.Tier)
	}
	// Newlines cannot occur in any part: header values, a method, an
	// escaped path, a service name. One write of all of them: each write
	// to the hash costs a call and a copy.
	msg := m.msg[:0]
	for _, part := range [...]string{"lucid-caller/v1", caller, ts, method, path, sub, tier} {
		msg = append(msg, part...)
		msg = append(msg, '\n')
	}
	m.msg = msg
	m.h.Write(msg)
	m.out = m.h.Sum(m.out[:0])
	return m.out
}

// verifyCaller checks a Lucid-Caller value against r and returns the
// service that signed it.
func verifyCaller(key []byte, value string, now time.Time, r *http.Request, p *Principal) (string, error) {
	caller, rest, ok1 := strings.Cut(value, " ")
	ts, mac, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return "", errors.New("malformed service signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", errors.New("malformed service signature time")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > callerSkew || d < -callerSkew {
		return "", fmt.Errorf("service signature is %s away from this clock", d.Round(time.Second))
	}
	got, err := hex.DecodeString(mac)
	m := &callerMAC{h: hmac.New(sha256.New, key)}
	if err != nil || !hmac.Equal(got, m.sum(caller, ts, r.Method, r.URL.EscapedPath(), p)) {
		return "", errors.New("service signature does not verify")
	}
	return caller, nil
}

// principalFromHeaders reads the principal headers, nil when there are
// none; malformed ones are an error (the gateway never sends them).
func principalFromHeaders(h http.Header) (*Principal, error) {
	sub, tier := h.Get(HeaderSub), h.Get(HeaderTier)
	if sub == "" && tier == "" {
		return nil, nil
	}
	if err := auth.CheckSubject(sub); err != nil {
		return nil, err
	}
	t, err := auth.ParseTier(tier)
	if err != nil {
		return nil, err
	}
	return &Principal{Subject: sub, Tier: t}, nil
}

// isOperator checks the bearer token of r against the operator token's
// hash, in constant time.
func (s *Server) isOperator(r *http.Request) bool {
	if len(s.cfg.OperatorTokenHash) == 0 {
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.cfg.OperatorTokenHash) == 1
}

// sharedEndpoint reports whether path answers anyone: container health
// checks, Consul and Prometheus hold no credential.
func sharedEndpoint(path string) bool {
	return path == "/health" || path == "/ready" || path == "/metrics"
}

// identify establishes who made each request (see the top of this file)
// and refuses, except on the shared endpoints, a request from nobody
// known. The mesh controller authenticates enrolment by token itself, and
// a public listener (the gateway) serves users, so neither refuses here.
func (s *Server) identify(next http.Handler) http.Handler {
	if s.cfg.Public {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.identityOfRequest(r)
		if err != nil {
			s.logger.WarnContext(r.Context(), "refused a request", "reason", err.Error(), "remote", r.RemoteAddr, "path", LogPath(r.URL.Path))
			WriteError(w, r, s.logger, Errorf(http.StatusForbidden, CodeForbidden, "the caller is not allowed here"))
			return
		}
		if id.caller == "" && !id.operator && s.cfg.Name != catalog.MeshService && !sharedEndpoint(r.URL.Path) {
			msg := "a mesh certificate is required (users reach the services through the gateway)"
			if s.identity.Load() == nil {
				msg = "a Lucid service signature is required (users reach the services through the gateway)"
			}
			s.logger.WarnContext(r.Context(), "refused a request from an unknown caller", "remote", r.RemoteAddr, "path", LogPath(r.URL.Path))
			WriteError(w, r, s.logger, Errorf(http.StatusForbidden, CodeForbidden, "%s", msg))
			return
		}
		if id.caller != "" || id.operator {
			if ri := requestInfoOf(r.Context()); ri != nil {
				ri.who = id
			} else { // a handler chain without the request-ID middleware
				r = r.WithContext(context.WithValue(r.Context(), requestInfoKey{}, &requestInfo{who: id}))
			}
		}
		next.ServeHTTP(w, r)
	})
}

// identityOfRequest finds r's caller, operator credential and principal.
// An error is a credential that was presented and is wrong.
func (s *Server) identityOfRequest(r *http.Request) (*identity, error) {
	id := &identity{operator: s.isOperator(r)}
	if s.identity.Load() != nil {
		// The handshake verified the certificate and the allow list.
		id.caller, _ = meshtls.Caller(r)
	} else if v := r.Header.Get(HeaderCaller); v != "" {
		if len(s.cfg.ServiceKey) == 0 {
			return nil, errors.New("a service signature, and no service key is configured")
		}
		p, err := principalFromHeaders(r.Header)
		if err != nil {
			return nil, err
		}
		caller, err := verifyCaller(s.cfg.ServiceKey, v, time.Now(), r, p)
		if err != nil {
			return nil, err
		}
		if !catalog.MayCall(caller, s.cfg.Name) {
			return nil, fmt.Errorf("service %q may not call %s", caller, s.cfg.Name)
		}
		id.caller = caller
	}
	if id.caller != "" && catalog.MayActFor(id.caller, s.cfg.Name) {
		p, err := principalFromHeaders(r.Header)
		if err != nil {
			return nil, fmt.Errorf("principal from %s: %w", id.caller, err)
		}
		id.principal = p
	}
	return id, nil
}

// signingTransport makes the calls of a service with the mesh off: each
// request carries this service's signature and, towards a service it may
// act for users towards, the principal of the request it serves.
type signingTransport struct {
	base   http.RoundTripper
	key    []byte
	caller string
	target string
}

func (t *signingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	p := outgoingPrincipal(req.Context(), t.caller, t.target, out.Header)
	out.Header.Set(HeaderCaller, SignCaller(t.key, t.caller, time.Now(), out.Method, out.URL.EscapedPath(), p))
	return t.base.RoundTrip(out)
}

// principalTransport passes the principal on over mTLS, where the
// certificate says who calls.
type principalTransport struct {
	base           http.RoundTripper
	caller, target string
}

func (t *principalTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if p, ok := PrincipalOf(req.Context()); ok && catalog.MayActFor(t.caller, t.target) {
		out := req.Clone(req.Context())
		setPrincipal(out.Header, &p)
		req = out
	}
	return t.base.RoundTrip(req)
}

// outgoingPrincipal sets h's principal headers from ctx when caller may
// act for users towards target, clears them otherwise, and returns it.
func outgoingPrincipal(ctx context.Context, caller, target string, h http.Header) *Principal {
	if p, ok := PrincipalOf(ctx); ok && catalog.MayActFor(caller, target) {
		setPrincipal(h, &p)
		return &p
	}
	setPrincipal(h, nil)
	return nil
}

func setPrincipal(h http.Header, p *Principal) {
	if p == nil {
		h.Del(HeaderSub)
		h.Del(HeaderTier)
		return
	}
	h.Set(HeaderSub, p.Subject)
	h.Set(HeaderTier, string(p.Tier))
}

// UserHandlerFunc handles a request made for the user p.
type UserHandlerFunc func(w http.ResponseWriter, r *http.Request, p Principal) error

// ForUser lets in only requests that act for a user (from a caller that
// may pass the principal on; see catalog.MayActFor), and hands h the
// principal.
func ForUser(h UserHandlerFunc) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, ok := PrincipalOf(r.Context())
		if !ok {
			return Errorf(http.StatusUnauthorized, CodeAuth, "this endpoint acts for a user: call it through the gateway with a token")
		}
		return h(w, r, p)
	}
}

// ForOperator lets in only requests that bear the operator credential.
func ForOperator(h HandlerFunc) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if !IsOperator(r.Context()) {
			return Errorf(http.StatusForbidden, CodeForbidden, "this endpoint needs the operator credential")
		}
		return h(w, r)
	}
}

// ForAUser reports whether the request ctx belongs to is made for a user:
// with a principal, or through the service that faces clients (an
// anonymous user's, on a route the operator made public).
func ForAUser(ctx context.Context) bool {
	_, ok := PrincipalOf(ctx)
	return ok || fromPublicDoor(ctx)
}

// NotForUsers lets in the Pi's services and the operator, never a request
// made for a user: what h answers describes the deployment itself (hosts,
// addresses, consensus), which a user reaching the service through the
// gateway has no business reading, with a token or without one (on a route
// the operator made public).
func NotForUsers(h HandlerFunc) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if ForAUser(r.Context()) {
			return Errorf(http.StatusForbidden, CodeForbidden, "this endpoint describes the deployment: it answers the Pi's services and the operator, not users")
		}
		return h(w, r)
	}
}

// OwnerOf names whose data r is about: the principal's own, or, for the
// operator, the owner named by ?owner= (empty: data stored before owners
// existed). Anyone else gets a 401 saying what would do.
func OwnerOf(r *http.Request) (string, error) {
	if p, ok := PrincipalOf(r.Context()); ok {
		return p.Subject, nil
	}
	if IsOperator(r.Context()) {
		return r.URL.Query().Get("owner"), nil
	}
	return "", Errorf(http.StatusUnauthorized, CodeAuth, "this acts for a user's data: call through the gateway with their token, or as the operator naming ?owner=")
}
