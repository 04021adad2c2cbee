// Package servicetest helps tests reach Lucid services as the services
// reach each other with the mesh off: every request signed with a shared
// service key, as a named caller, acting for a user or for none.
package servicetest

import (
	"crypto/sha256"
	"net/http"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/service"
)

// Key is the service key of test deployments.
const Key = "lucid-test-service-key-0123456789abcdefghijklmnop"

// OperatorToken is the operator token of test deployments; its hash is in
// Config and Env.
const OperatorToken = "lucid-test-operator-token-0123456789abcdefghij"

// Config is the base configuration of service name for a test: data in
// dataDir, the test service key and operator token hash.
func Config(name, dataDir string) service.Config {
	return service.Config{
		Name: name, DataDir: dataDir, ShutdownTimeout: time.Second,
		ServiceKey:        []byte(Key),
		OperatorTokenHash: operatorHash(),
	}
}

func operatorHash() []byte {
	sum := sha256.Sum256([]byte(OperatorToken))
	return sum[:]
}

// Env is the environment a test gives a `lucid` process with the mesh
// off: the service key and the operator token's own hash, for tests that send
// the token itself.
func Env() []string {
	return []string{service.EnvServiceKey + "=" + Key, service.EnvOperatorHash + "=" + auth.OperatorTokenHash(OperatorToken)}
}

// EnvFor is Env for a `lucid` process of service name on host (its name in
// lucid.yaml) that lucidctl's clients reach as a deployment's are: with
// the operator credential of that service on that host
// (auth.OperatorCredential of OperatorToken), as a deploy gives it.
func EnvFor(name, host string) []string {
	return []string{service.EnvServiceKey + "=" + Key, service.EnvOperatorHash + "=" + auth.OperatorTokenHash(auth.OperatorCredential(OperatorToken, name, host))}
}

// Transport signs each request as service caller; with p set it acts for
// that principal.
type Transport struct {
	Caller    string
	Principal *service.Principal
	// Base sends the requests (default http.DefaultTransport).
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	if t.Principal != nil {
		out.Header.Set(service.HeaderSub, t.Principal.Subject)
		out.Header.Set(service.HeaderTier, string(t.Principal.Tier))
	}
	out.Header.Set(service.HeaderCaller, service.SignCaller([]byte(Key), t.Caller, time.Now(), out.Method, out.URL.EscapedPath(), t.Principal))
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	return base.RoundTrip(out)
}

// Client returns a client whose requests service caller signs.
func Client(caller string) *http.Client {
	return &http.Client{Transport: &Transport{Caller: caller}}
}

// User returns a client that reaches services as the gateway does for the
// free-tier user sub.
func User(sub string) *http.Client {
	return &http.Client{Transport: &Transport{Caller: "gateway", Principal: &service.Principal{Subject: sub, Tier: auth.TierFree}}}
}

// Operator returns a client whose requests carry the test operator token.
func Operator() *http.Client {
	return &http.Client{Transport: operatorTransport{}}
}

type operatorTransport struct{}

func (operatorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "Bearer "+OperatorToken)
	return http.DefaultTransport.RoundTrip(out)
}

// WithoutIDs is an answer's body with the ids it names and its request id
// set aside, so that answers about different ids compare equal when they
// say the same thing: how tests check that another user's data is
// answered exactly as none.
func WithoutIDs(body string, ids ...string) string {
	for _, id := range ids {
		body = strings.ReplaceAll(body, id, "ID")
	}
	if i := strings.Index(body, `"request_id"`); i >= 0 {
		body = body[:i]
	}
	return body
}
