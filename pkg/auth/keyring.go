package auth

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pickme/lucid/pkg/keyring"
)

// KeyID is the kid of an HS256 key: 16 hex digits of SHA-256 over an
// HKDF-derived value, so it names the key without revealing anything of
// it (nor anything a MAC key could be recovered from).
func KeyID(secret []byte) string {
	derived, err := hkdf.Key(sha256.New, secret, []byte("lucid/jwt/v1"), "key id", 32)
	if err != nil {
		// Only for an output longer than HKDF-SHA256 can give; 32 is not.
		panic(err)
	}
	sum := sha256.Sum256(derived)
	return hex.EncodeToString(sum[:8])
}

// ringKey is one key of a Keyring.
type ringKey struct {
	id     string
	secret []byte
	// until is when a previous key stops verifying; zero for the current
	// key.
	until time.Time
}

// Keyring holds the current signing key and the previous keys that still
// verify. It is immutable and safe for concurrent use.
type Keyring struct {
	current ringKey
	byID    map[string]ringKey
}

// ErrUnknownKey reports a token whose kid names no key of the ring.
var ErrUnknownKey = errors.New("token names a key this verifier does not hold")

// ErrRetiredKey reports a token signed with a previous key past its
// retirement.
var ErrRetiredKey = errors.New("token was signed with a retired key")

// NewKeyring returns the ring of current (JWT_SECRET_KEY) and previous
// (JWT_PREVIOUS_KEYS). Every key must be strong enough; a previous key
// equal to the current one is dropped. Errors never hold a key.
func NewKeyring(current []byte, previous []keyring.Entry) (*Keyring, error) {
	if err := CheckSecret(current); err != nil {
		return nil, err
	}
	r := &Keyring{current: ringKey{id: KeyID(current), secret: current}, byID: map[string]ringKey{}}
	r.byID[r.current.id] = r.current
	for i, e := range previous {
		if err := CheckSecret(e.Value); err != nil {
			return nil, fmt.Errorf("previous key %d: %w", i+1, err)
		}
		k := ringKey{id: KeyID(e.Value), secret: e.Value, until: e.Until}
		if old, ok := r.byID[k.id]; ok {
			if string(old.secret) == string(k.secret) {
				continue
			}
			return nil, fmt.Errorf("previous key %d has the key id of another key (%s)", i+1, k.id)
		}
		r.byID[k.id] = k
	}
	return r, nil
}

// CurrentID is the kid of the current key.
func (r *Keyring) CurrentID() string { return r.current.id }

// Mint signs a token with the current key.
func (r *Keyring) Mint(opts MintOptions) (string, Claims, error) {
	return Mint(r.current.secret, opts)
}

// Parse verifies token and returns its claims and the time after which
// the key that signed it no longer verifies (zero: the current key). Only
// HS256 is accepted, exp is required and nbf honoured, within Leeway;
// with options, iss and aud are required too. The key is the one its kid
// names; without kid, the current key; a previous key counts only before
// its retirement.
func (r *Keyring) Parse(token string, now func() time.Time, options ...ParseOption) (Claims, time.Time, error) {
	if now == nil {
		now = time.Now
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(Leeway),
		jwt.WithTimeFunc(now),
	}
	for _, o := range options {
		o(&opts)
	}
	var claims Claims
	var until time.Time
	keyfunc := func(t *jwt.Token) (any, error) {
		raw, ok := t.Header["kid"]
		if !ok {
			return r.current.secret, nil
		}
		kid, ok := raw.(string)
		if !ok {
			return nil, errors.New("kid header is not a string")
		}
		k, ok := r.byID[kid]
		switch {
		case !ok:
			return nil, fmt.Errorf("%w (kid %q)", ErrUnknownKey, kid)
		case k.until.IsZero():
		case !now().Before(k.until):
			return nil, fmt.Errorf("%w (kid %s, retired at %s)", ErrRetiredKey, kid, k.until.Format(time.RFC3339))
		}
		until = k.until
		return k.secret, nil
	}
	if _, err := jwt.ParseWithClaims(token, &claims, keyfunc, opts...); err != nil {
		return Claims{}, time.Time{}, err
	}
	if err := CheckSubject(claims.Subject); err != nil {
		return Claims{}, time.Time{}, err
	}
	if _, err := ParseTier(string(claims.Tier)); err != nil {
		return Claims{}, time.Time{}, err
	}
	return claims, until, nil
}
