package chain

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// Validator keys are note keys (Ed25519). The signer key stays in the
// node's data dir (<dir>/validator.key, mode 0600); the verifier key
// "<name>+<hash>+<data>" (<dir>/validator.pub) is public and is what
// `lucidctl verify receipt --key` takes.

// GenerateKey returns a new validator key pair named name.
func GenerateKey(name string) (signerKey, verifierKey string, err error) {
	return note.GenerateKey(rand.Reader, name)
}

// LoadOrCreateKey reads the validator key pair in dir, or creates one named
// name on first start. It returns the signer and the public verifier key.
func LoadOrCreateKey(dir, name string) (note.Signer, string, error) {
	skPath, pkPath := filepath.Join(dir, "validator.key"), filepath.Join(dir, "validator.pub")
	sk, err := os.ReadFile(skPath)
	if errors.Is(err, fs.ErrNotExist) {
		skey, vkey, err := GenerateKey(name)
		if err != nil {
			return nil, "", err
		}
		if err := writeNew(pkPath, vkey, 0o644); err != nil {
			return nil, "", err
		}
		if err := writeNew(skPath, skey, 0o600); err != nil {
			return nil, "", err
		}
		sk = []byte(skey)
	} else if err != nil {
		return nil, "", fmt.Errorf("read validator key: %w", err)
	}
	pk, err := os.ReadFile(pkPath)
	if err != nil {
		return nil, "", fmt.Errorf("read validator public key: %w", err)
	}
	signer, err := note.NewSigner(strings.TrimSpace(string(sk)))
	if err != nil {
		// The key material never goes into an error.
		return nil, "", fmt.Errorf("%s is not a valid validator key", skPath)
	}
	vkey := strings.TrimSpace(string(pk))
	verifier, err := ParseVerifier(vkey)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", pkPath, err)
	}
	if verifier.Name() != signer.Name() || verifier.KeyHash() != signer.KeyHash() {
		return nil, "", fmt.Errorf("%s does not belong to %s", pkPath, skPath)
	}
	return signer, vkey, nil
}

// writeNew writes a key file whole or not at all, and durably: a power cut
// while the key is made leaves no empty or partial key that every later
// start would refuse. The public key is written before the private one, so
// a missing private key (made again, with its public key) is the only
// half-way state.
func writeNew(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(content+"\n"), mode)
}

// ParseVerifier parses a verifier key.
func ParseVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, fmt.Errorf("not a validator public key (want name+hash+key): %w", err)
	}
	return v, nil
}

// CanonicalVerifier checks that vkey is a verifier key spelt as note
// writes one: nothing around it, and its hash in lower-case hex. The chain
// compares validator keys as strings (the set a block is checked against,
// a key removed), while ParseVerifier reads those other spellings as the
// same key: a key added twice so would make every block it signs
// ambiguous, and one removed so would stay a validator. (note reads the
// key's data strictly: a 33-byte key has one base64 spelling.)
func CanonicalVerifier(vkey string) error {
	if _, err := ParseVerifier(vkey); err != nil {
		return err
	}
	parts := strings.SplitN(vkey, "+", 3)
	if vkey != strings.TrimSpace(vkey) || len(parts) != 3 || parts[1] != strings.ToLower(parts[1]) {
		return errors.New("not a validator public key as the node's validator.pub spells it (name+hash+key, the hash in lower-case hex, nothing around it)")
	}
	return nil
}

// Verifiers parses a list of verifier keys.
func Verifiers(vkeys []string) (note.Verifiers, error) {
	var vs []note.Verifier
	for _, k := range vkeys {
		v, err := ParseVerifier(k)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return note.VerifierList(vs...), nil
}
