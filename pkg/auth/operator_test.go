package auth

import "testing"

const testOperatorToken = "the-operator-token-of-the-tests-0123456789"

// TestOperatorCredentialBindsServiceAndHost: the credential for one
// service on one host is no other service's, on no other host, under no
// other token, and not the per-service credential of releases rendered
// before: what a compromised service records opens nothing else.
func TestOperatorCredentialBindsServiceAndHost(t *testing.T) {
	seen := map[string]string{}
	for _, service := range []string{"engine", "mesh", "datachain"} {
		for _, host := range []string{"pi1", "pi2", LocalHost} {
			c := OperatorCredential(testOperatorToken, service, host)
			what := service + " on " + host
			if other, ok := seen[c]; ok {
				t.Errorf("%s and %s share a credential", other, what)
			}
			seen[c] = what
			if c == LegacyOperatorCredential(testOperatorToken, service) {
				t.Errorf("%s: the credential is the per-service one of older releases", what)
			}
			if c == OperatorCredential("another-operator-token-of-the-tests-012345", service, host) {
				t.Errorf("%s: another token gives the same credential", what)
			}
			if c != OperatorCredential(testOperatorToken, service, host) {
				t.Errorf("%s: the credential is not the same twice", what)
			}
		}
	}
}

// TestOperatorCredentialNamesCannotCollide: bytes moved from one name to
// the other, or a name holding what would be a length and the next name,
// give another message, so another credential.
func TestOperatorCredentialNamesCannotCollide(t *testing.T) {
	type names struct{ service, host string }
	for _, pair := range [][2]names{
		{{"a", "b\x00c"}, {"a\x00b", "c"}},
		{{"ab", "c"}, {"a", "bc"}},
		{{"engine", ""}, {"", "engine"}},
		{{"engine", "pi1"}, {"engine\x00\x00\x00\x00\x00\x00\x00\x03pi1", ""}},
		{{"engine", "pi1"}, {"engine\x00pi1", ""}},
	} {
		a := OperatorCredential(testOperatorToken, pair[0].service, pair[0].host)
		b := OperatorCredential(testOperatorToken, pair[1].service, pair[1].host)
		if a == b {
			t.Errorf("service %q on host %q and service %q on host %q share a credential", pair[0].service, pair[0].host, pair[1].service, pair[1].host)
		}
	}
}

// TestOperatorCredentialIsStable pins the derivation: deployed hosts hold
// hashes of these credentials, so a change locks the operator out of each
// until it is deployed again. The value was computed apart from this code
// (HMAC-SHA256 of the token over "lucid operator credential v2", then
// each name after its length as 8 bytes big-endian).
func TestOperatorCredentialIsStable(t *testing.T) {
	const want = "786a057f1bd70ecff467d197ccbd4faf218059fc44eb1274c2e830db6fffbeb3"
	if got := OperatorCredential(testOperatorToken, "engine", "pi1"); got != want {
		t.Errorf("the engine's credential on pi1 = %s, want %s", got, want)
	}
}
