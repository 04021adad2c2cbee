package deployfiles

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/envfile"
)

// ErrNoOperatorToken is binding env files that hold operator credentials'
// hashes without the operator token to derive the host's from.
var ErrNoOperatorToken = errors.New("no operator token (LUCID_OPERATOR_TOKEN) to bind the services' operator credentials to the host with")

// BindOperatorCredentials returns files, a release's service env files by
// project path (ServiceEnvPath) as rendered, with each service's
// LUCID_OPERATOR_TOKEN_SHA256 the hash of its operator credential for
// host, derived from token (auth.OperatorCredential): what a deploy to
// host ships, so that what the operator sends one host's service opens
// nothing on another host. Render binds them to auth.LocalHost, and an
// older render per service or to the token itself; any of these forms of
// token is bound again. A file that holds no hash (a render without an
// operator token) is left as it is. A hash that is no form of token's is
// an error: the files were rendered from another token than the one
// lucidctl will send. Errors name files, never a value.
func BindOperatorCredentials(files map[string][]byte, token, host string) (map[string][]byte, error) {
	return bindOperatorCredentials(files, token, host, false)
}

// RebindOperatorCredentials is BindOperatorCredentials for env files that
// come back from a backup: whatever each service's hash was bound to (the
// host the backup was taken of, a release rendered before per-host
// credentials, an operator token rotated since), it becomes that of the
// credential from token for host. Written back as they were, another
// host's files would let that host's services replay what the operator
// sends them to this host's, and lucidctl's own credentials would be
// refused.
func RebindOperatorCredentials(files map[string][]byte, token, host string) (map[string][]byte, error) {
	return bindOperatorCredentials(files, token, host, true)
}

func bindOperatorCredentials(files map[string][]byte, token, host string, whatever bool) (map[string][]byte, error) {
	if host == "" {
		return nil, errors.New("bind the operator credentials: no host name")
	}
	out := maps.Clone(files)
	for _, p := range slices.Sorted(maps.Keys(files)) {
		svc, ok := envFileService(p)
		if !ok {
			continue
		}
		vals, err := envfile.Parse(files[p])
		if err != nil {
			return nil, &envFileError{path: p, err: err}
		}
		h := vals[operatorTokenHashKey]
		if h == "" {
			continue
		}
		if token == "" {
			return nil, fmt.Errorf("%s: %w", p, ErrNoOperatorToken)
		}
		if !whatever && !hashOfToken(h, token, svc.Name, host) {
			return nil, fmt.Errorf("%s holds the operator credential of another LUCID_OPERATOR_TOKEN than the one given: render again from the env file that holds the token (lucidctl render)", p)
		}
		bound := auth.OperatorTokenHash(auth.OperatorCredential(token, svc.Name, host))
		if out[p], _, err = envfile.Update(p, files[p], map[string]string{operatorTokenHashKey: bound}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// hashOfToken says h is the hash of service's operator credential from
// token in a form render writes or wrote: bound to auth.LocalHost or to
// host already, per service, or of the token itself.
func hashOfToken(h, token, service, host string) bool {
	return operatorFormOf(h, token, service, host) != OperatorHashesOther ||
		operatorFormOf(h, token, service, auth.LocalHost) == OperatorHashesBound
}
