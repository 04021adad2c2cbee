// Package auth mints and verifies the HS256 JSON Web Tokens that Lucid's
// gateway accepts: `sub` names the caller, `tier` sets its rate limit, and
// `exp` is required.
//
// Verification is strict: only HS256 is accepted (so `none` and RS256/HS256
// confusion fail), `exp` must be present, and clocks may disagree by Leeway.
// A verifier may also require an issuer (`iss`) and an audience (`aud`).
//
// Keys form a ring (Keyring) so JWT_SECRET_KEY can be rotated without
// downtime: the current key signs, and each token names its key in the
// `kid` header (KeyID, derived from the key and revealing nothing of it);
// previous keys (JWT_PREVIOUS_KEYS) still verify the tokens they signed
// until their retirement time. A token without `kid` (minted before key
// ids) verifies against the current key only; an unknown `kid` is refused.
//
// It also derives the operator's credentials from the operator token
// (OperatorCredential): one for each service on each host, so that none
// can be replayed elsewhere.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The variables naming the issuer and audience a deployment's tokens carry:
// the gateway requires them when set, and lucidctl token mints them.
const (
	EnvIssuer   = "LUCID_JWT_ISSUER"
	EnvAudience = "LUCID_JWT_AUDIENCE"
)

// MinSecretLen is the shortest JWT_SECRET_KEY accepted: HS256 keys shorter
// than the hash output weaken the MAC.
const MinSecretLen = 32

// Leeway is the clock skew tolerated when checking exp and nbf.
const Leeway = 30 * time.Second

// ErrWeakSecret reports a missing or too short signing secret.
var ErrWeakSecret = errors.New("JWT secret is too short")

// Tier is a rate-limit tier.
type Tier string

// The tiers, from the Phase 2 rate-limit table.
const (
	TierFree       Tier = "free"
	TierPremium    Tier = "premium"
	TierEnterprise Tier = "enterprise"
)

// Tiers lists every valid tier.
var Tiers = []Tier{TierFree, TierPremium, TierEnterprise}

// PerTier is a setting with a value for each tier: a rate limit, a quota,
// a daily bound.
type PerTier[T any] map[Tier]T

// Of is t's value. A tier the setting does not hold (a principal of no
// known tier) gets the free tier's, the least any token carries.
func (p PerTier[T]) Of(t Tier) T {
	if v, ok := p[t]; ok {
		return v
	}
	return p[TierFree]
}

// ParseTier returns the tier called s.
func ParseTier(s string) (Tier, error) {
	for _, t := range Tiers {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown tier %q (want free, premium or enterprise)", s)
}

// Claims are the token claims Lucid uses.
type Claims struct {
	Tier Tier `json:"tier"`
	jwt.RegisteredClaims
}

// CheckSecret reports whether secret is strong enough to sign with.
func CheckSecret(secret []byte) error {
	if len(secret) == 0 {
		return fmt.Errorf("%w: it is empty", ErrWeakSecret)
	}
	if len(secret) < MinSecretLen {
		return fmt.Errorf("%w: %d bytes, at least %d are required", ErrWeakSecret, len(secret), MinSecretLen)
	}
	return nil
}

// MintOptions describe a token to mint.
type MintOptions struct {
	Subject string
	Tier    Tier
	TTL     time.Duration
	// Now is the issue time; zero means time.Now.
	Now time.Time
	// Issuer, if set, is the token's iss claim.
	Issuer string
	// Audience, if set, is the token's aud claim.
	Audience []string
}

// Mint returns a signed HS256 token and its claims; its kid header names
// secret (KeyID).
func Mint(secret []byte, opts MintOptions) (string, Claims, error) {
	if err := CheckSecret(secret); err != nil {
		return "", Claims{}, err
	}
	if err := CheckSubject(opts.Subject); err != nil {
		return "", Claims{}, fmt.Errorf("a token needs a subject: one of 1..%d bytes without control characters or spaces at either end (%w)", MaxSubjectLen, err)
	}
	if _, err := ParseTier(string(opts.Tier)); err != nil {
		return "", Claims{}, err
	}
	if opts.TTL <= 0 {
		return "", Claims{}, fmt.Errorf("token lifetime must be positive, got %s", opts.TTL)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	now = now.Truncate(time.Second)
	claims := Claims{
		Tier: opts.Tier,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   opts.Subject,
			Issuer:    opts.Issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(opts.TTL)),
		},
	}
	if len(opts.Audience) > 0 {
		claims.Audience = jwt.ClaimStrings(opts.Audience)
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	t.Header["kid"] = KeyID(secret)
	signed, err := t.SignedString(secret)
	if err != nil {
		return "", Claims{}, fmt.Errorf("sign token: %w", err)
	}
	return signed, claims, nil
}

// MaxSubjectLen bounds a token's subject, which the gateway passes upstream
// in a header and keys rate limits by.
const MaxSubjectLen = 256

// CheckSubject accepts a subject that is non-empty, short, free of
// control characters and of spaces at either end, so it is safe as a
// header value, a log field and a key prefix in the services' stores, and
// reaches a service as the gateway verified it: a header's parser drops the
// spaces around a value, so " alice " would reach a service as "alice",
// another user than the one the gateway counted.
func CheckSubject(sub string) error {
	switch {
	case sub == "":
		return errors.New("token has no subject")
	case len(sub) > MaxSubjectLen:
		return fmt.Errorf("token subject of %d bytes (at most %d)", len(sub), MaxSubjectLen)
	case sub[0] == ' ' || sub[len(sub)-1] == ' ':
		return errors.New("token subject begins or ends with a space")
	}
	for _, c := range []byte(sub) {
		if c < 0x20 || c == 0x7f {
			return errors.New("token subject holds control characters")
		}
	}
	return nil
}

// ParseOption adds a requirement to Parse.
type ParseOption func(*[]jwt.ParserOption)

// WithIssuer requires the token's iss claim to be iss; empty requires
// nothing.
func WithIssuer(iss string) ParseOption {
	return func(o *[]jwt.ParserOption) {
		if iss != "" {
			*o = append(*o, jwt.WithIssuer(iss))
		}
	}
}

// WithAudience requires the token's aud claim to include aud; empty
// requires nothing.
func WithAudience(aud string) ParseOption {
	return func(o *[]jwt.ParserOption) {
		if aud != "" {
			*o = append(*o, jwt.WithAudience(aud))
		}
	}
}

// Parse verifies token with secret alone (a ring of one key) and returns
// its claims; see Keyring.Parse.
func Parse(secret []byte, token string, now func() time.Time, options ...ParseOption) (Claims, error) {
	ring, err := NewKeyring(secret, nil)
	if err != nil {
		return Claims{}, err
	}
	c, _, err := ring.Parse(token, now, options...)
	return c, err
}

// LocalHost is the host name of the local stack (lucidctl up, on the
// operator's own machine): its services' operator credentials are bound
// to it, as are those of the env files lucidctl render writes until a
// deploy binds them to its target. lucid.yaml may name no target so.
const LocalHost = "local"

// operatorCredentialDomain opens every operator credential's message: it
// keeps them apart from anything else derived from the token (backup
// signing keys), and from the credentials of releases rendered before
// (LegacyOperatorCredential's "v1").
const operatorCredentialDomain = "lucid operator credential v2"

// OperatorCredential is what the operator presents to service (a catalog
// name) on host (its target name in lucid.yaml, or LocalHost) as its
// bearer token: a value derived from the operator token for that service
// on that host alone. A service is sent only its own credential and
// cannot derive another's, so one that is compromised cannot replay what
// the operator sent it to another service (say, to the mesh controller
// for the CA's keys), nor to the same service on another host of a
// cluster (another Pi's engine). Each service holds the hash of its own
// credential (OperatorTokenHash of it, in LUCID_OPERATOR_TOKEN_SHA256),
// never the token.
//
// Each name goes into the MAC after its length, so no two pairs of names
// give one message, whatever bytes they hold.
func OperatorCredential(token, service, host string) string {
	msg := []byte(operatorCredentialDomain)
	for _, name := range []string{service, host} {
		msg = binary.BigEndian.AppendUint64(msg, uint64(len(name)))
		msg = append(msg, name...)
	}
	m := hmac.New(sha256.New, []byte(token))
	m.Write(msg)
	return hex.EncodeToString(m.Sum(nil))
}

// LegacyOperatorCredential is the operator credential of releases rendered
// before per-host credentials: bound to the service alone, so one host's
// service could replay it to the same service on another host. lucidctl
// never sends it; it serves only to recognise such a release's hashes
// and say that the host must be deployed.
func LegacyOperatorCredential(token, service string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("lucid operator credential v1\x00" + service))
	return hex.EncodeToString(m.Sum(nil))
}

// OperatorTokenHash is the hex SHA-256 of an operator token or credential.
// Services are given the hash of their credential (OperatorCredential),
// never the token; the token is long and random, so the hash gives
// nothing away.
func OperatorTokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
