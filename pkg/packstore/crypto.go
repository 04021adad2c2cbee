package packstore

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// newAEAD derives the pack encryption key from the operator's secret with
// HKDF-SHA256, so the secret itself never touches a pack.
func newAEAD(secret []byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, secret, []byte("lucid/datachain/v1"), "pack encryption", chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	return chacha20poly1305.NewX(key)
}

// seal encrypts plaintext with a random nonce; the chunk id is the
// associated data, so a payload moved to another record does not open.
func seal(aead cipher.AEAD, id []byte, plaintext []byte) []byte {
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	_, _ = rand.Read(out) // crypto/rand.Read never fails
	return aead.Seal(out, out, plaintext, id)
}

// ErrWrongKey means the store was encrypted with another key.
var ErrWrongKey = errors.New("ENCRYPTION_KEY does not match the key this data was stored with")

func open(aead cipher.AEAD, id []byte, payload []byte) ([]byte, error) {
	if len(payload) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: encrypted payload too short", ErrCorrupt)
	}
	pt, err := aead.Open(nil, payload[:aead.NonceSize()], payload[aead.NonceSize():], id)
	if err != nil {
		return nil, fmt.Errorf("%w: decryption failed (wrong key or altered data)", ErrCorrupt)
	}
	return pt, nil
}
