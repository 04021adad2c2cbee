package backup

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// Backups are signed. age encrypts for the recipients, whose keys are
// public (lucid.yaml), and says nothing of who wrote a file: anyone who can
// write to the backup disk could otherwise put a backup of their own there,
// env files and all (a JWT key of theirs, an operator token), and a restore
// would take it for the newest. Each backup's manifest is signed with an
// Ed25519 key of the operator's, written beside it in <id>.sig before the
// manifest itself, and a repository that trusts keys (Trust) loads, lists
// as latest and verifies only backups one of them signed. The manifest
// names every piece by its SHA-256, so its signature covers the backup.

// ErrUnsigned reports a backup whose manifest no trusted key signed.
var ErrUnsigned = errors.New("not signed by a trusted key")

const sigSuffix = ".sig"

// SigningKey derives the Ed25519 key that signs backups from secret (the
// operator token): the operator needs no key file of its own, and the
// public key (SignerOf) can be pinned in lucid.yaml.
func SigningKey(secret string) (ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, []byte(secret), nil, "lucid backup signing v1", ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// SignerOf is key's public key as lucid.yaml's backup.signers holds it.
func SignerOf(key ed25519.PrivateKey) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
}

// ParseSigner parses a key of backup.signers (SignerOf's form).
func ParseSigner(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), "ed25519:")
	if !ok {
		return nil, errors.New(`not "ed25519:" and a base64 key`)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not a base64 Ed25519 public key of %d bytes", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// signedMessage is what a backup's signature covers: its id and its
// manifest file as stored, so a manifest moved under another id (a newer
// one) does not verify.
func signedMessage(id string, manifest []byte) []byte {
	sum := sha256.Sum256(manifest)
	return fmt.Appendf(nil, "lucid backup manifest v1\n%s\n%x\n", id, sum)
}

// Trust makes the repository take only backups one of keys signed; none
// (the default) takes every backup.
func (r *Repository) Trust(keys []ed25519.PublicKey) { r.trusted = keys }

// Prefer makes a repository that trusts no key (a restore with
// --allow-unsigned) still take, for Latest, the newest backup one of keys
// signed when there is one: anyone who can write to the backup disk can
// plant an unsigned backup newer than every one of the operator's, and a
// backup nobody signed is then taken only when it is named, or when no
// backup is signed by keys at all.
func (r *Repository) Prefer(keys []ed25519.PublicKey) { r.preferred = keys }

// Signature is what a complete backup's signature is worth to the
// repository that lists it (Info.Signature).
type Signature string

const (
	// SignatureTrusted is a backup signed by a key the repository trusts.
	SignatureTrusted Signature = "trusted"
	// SignatureUntrusted is a backup with a signature no trusted key made
	// (another operator token's, one rotated since, or a forgery).
	SignatureUntrusted Signature = "untrusted"
	// SignatureUnchecked is a backup with a signature and a repository that trusts no
	// key to check it with.
	SignatureUnchecked Signature = "signed"
	// SignatureNone is a backup without a signature (taken before backups were
	// signed, or planted).
	SignatureNone Signature = "unsigned"
	// SignatureUnreadable is a backup whose signature or manifest could not
	// be read (a damaged disk; backup verify says more).
	SignatureUnreadable Signature = "unreadable"
)

// SignatureOf is complete backup id's Signature. Its manifest, as
// stored, is read only when there are keys to check it with.
func (r *Repository) SignatureOf(id string) Signature { return r.signatureWith(r.trusted, id) }

// signatureWith is SignatureOf with keys in place of the trusted ones.
func (r *Repository) signatureWith(keys []ed25519.PublicKey, id string) Signature {
	_, err := os.Stat(filepath.Join(r.dir, backupsDir, id+sigSuffix))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return SignatureNone
	case err != nil:
		return SignatureUnreadable
	case len(keys) == 0:
		return SignatureUnchecked
	}
	raw, err := readBounded(filepath.Join(r.dir, backupsDir, id+r.manifestSuffix()), maxManifestBytes)
	if err != nil {
		return SignatureUnreadable
	}
	switch err := signedBy(keys, r.dir, id, raw); {
	case errors.Is(err, ErrUnsigned):
		return SignatureUntrusted
	case err != nil:
		return SignatureUnreadable
	}
	return SignatureTrusted
}

// checkSigned reports whether backup id's manifest, as stored, is signed
// by a trusted key, when the repository trusts any.
func (r *Repository) checkSigned(id string, manifest []byte) error {
	if len(r.trusted) == 0 {
		return nil
	}
	return signedBy(r.trusted, r.dir, id, manifest)
}

// signedBy reports whether backup id's manifest, as stored in the
// repository at dir, is signed by one of keys.
func signedBy(keys []ed25519.PublicKey, dir, id string, manifest []byte) error {
	b, err := readBounded(filepath.Join(dir, backupsDir, id+sigSuffix), 1<<10)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("backup %s: %w (it has no signature)", id, ErrUnsigned)
	}
	if err != nil {
		return fmt.Errorf("backup %s: signature: %w", id, err)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err == nil {
		msg := signedMessage(id, manifest)
		for _, k := range keys {
			if ed25519.Verify(k, msg, sig) {
				return nil
			}
		}
	}
	return fmt.Errorf("backup %s: %w", id, ErrUnsigned)
}

// sign writes backup id's signature of manifest with key.
func (r *Repository) sign(id string, manifest []byte, key ed25519.PrivateKey) error {
	sig := ed25519.Sign(key, signedMessage(id, manifest))
	return atomicfile.Write(filepath.Join(r.dir, backupsDir, id+sigSuffix), []byte(base64.StdEncoding.EncodeToString(sig)+"\n"), 0o600)
}
