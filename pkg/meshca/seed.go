package meshca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Seed is a seed CA, read and checked; it is never written.
type Seed struct {
	dir string
	a   authority
}

// LoadSeed reads the seed CA in dir (read-only) and checks it as Open
// checks its own state: keys matching their certificates, the
// intermediate signed by the root, the root in the trust list.
func LoadSeed(dir string) (*Seed, error) {
	c := &CA{dir: dir}
	if err := c.load(); err != nil {
		return nil, fmt.Errorf("mesh CA seed in %s: %w", dir, err)
	}
	return &Seed{dir: dir, a: c.authority}, nil
}

// Fingerprint is the hex SHA-256 of the seed's root.
func (s *Seed) Fingerprint() string { return fingerprint(s.a.root) }

// Exists reports whether dir holds a CA (its ca.json), without opening it.
func Exists(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("mesh CA: %w", err)
	}
	return true, nil
}

// OpenSeeded starts the CA in dir from seed: the seed's files are copied
// in, then opened as Open does. dir must hold no CA yet.
func OpenSeeded(ctx context.Context, dir string, seed *Seed, opts Options) (*CA, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	switch found, err := Exists(dir); {
	case err != nil:
		return nil, err
	case found:
		return nil, fmt.Errorf("mesh CA in %s: already there; a seed starts only a new CA (adopt it instead)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mesh CA directory: %w", err)
	}
	if err := (&CA{dir: dir}).save(seed.a.clone()); err != nil {
		return nil, err
	}
	return Open(ctx, dir, opts)
}

// Adoption says what Adopt changed.
type Adoption struct {
	// Previous is the fingerprint of the root the CA had.
	Previous string
	// Root is the fingerprint of the root it has now, the seed's.
	Root string
	// PreviousTrustedUntil is when the previous root leaves the bundle
	// (zero: the seed's own trust list already held it, or nothing
	// changed).
	PreviousTrustedUntil time.Time
}

// Adopt replaces the CA's keys and certificates by the seed's: it issues
// from the seed's intermediate and its bundle is the seed's. Leaves already
// issued stay valid: the previous root stays in the bundle until every leaf
// it could have signed has expired, and the seed's root is cross-signed by
// the previous one, so new leaves verify at a peer that trusts only the
// previous root (a service of this CA that has not renewed yet). Roots the
// previous CA still trusted from a rotation of its own stay until their
// time. A CA whose root is the seed's is left as it is.
func (ca *CA) Adopt(ctx context.Context, seed *Seed) (Adoption, error) {
	if err := ctx.Err(); err != nil {
		return Adoption{}, err
	}
	res, err := ca.adopt(seed)
	if err != nil {
		return Adoption{}, err
	}
	// The seed's intermediate may be near its end, as Open finds it.
	return res, ca.refreshIntermediate()
}

func (ca *CA) adopt(seed *Seed) (Adoption, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.opts.Now()
	res := Adoption{Previous: fingerprint(ca.root), Root: fingerprint(seed.a.root)}
	if ca.root.Equal(seed.a.root) {
		return res, nil
	}
	next := seed.a.clone()
	known := func(c *x509.Certificate) bool {
		return slices.ContainsFunc(next.trust, func(t trusted) bool { return t.cert.Equal(c) })
	}
	if !known(ca.root) {
		cross, err := crossSign(now, next.rootK, ca.root, ca.rootK)
		if err != nil {
			return Adoption{}, err
		}
		res.PreviousTrustedUntil = now.Add(ca.opts.LeafTTL + backdate)
		next.crosses = append(next.crosses, cross)
		next.trust = append(next.trust, trusted{cert: ca.root, until: res.PreviousTrustedUntil})
	}
	for _, t := range ca.trust {
		if !t.until.IsZero() && t.until.After(now) && !known(t.cert) {
			next.trust = append(next.trust, t)
		}
	}
	if err := ca.save(next); err != nil {
		return Adoption{}, err
	}
	ca.authority = next
	return res, nil
}

// clone copies a's lists, so that a change to the copy leaves a as it is.
func (a authority) clone() authority {
	a.crosses = slices.Clone(a.crosses)
	a.trust = slices.Clone(a.trust)
	return a
}
