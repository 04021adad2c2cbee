package packstore

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
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

// keyID names a secret in version 2 records: the first 4 bytes of the
// SHA-256 of a value HKDF derives from it for this purpose alone, so it
// tells nothing of the secret or of the encryption key.
func keyID(secret []byte) (uint32, error) {
	derived, err := hkdf.Key(sha256.New, secret, []byte("lucid/datachain/v1"), "pack key id", 32)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(derived)
	return binary.BigEndian.Uint32(sum[:4]), nil
}

// KeyIDString is how a key id is shown: 8 hex digits.
func KeyIDString(id uint32) string { return fmt.Sprintf("%08x", id) }

// KeyIDOf returns the key id (KeyIDString) of an ENCRYPTION_KEY value, as
// records and Stats name it.
func KeyIDOf(secret []byte) (string, error) {
	id, err := keyID(secret)
	return KeyIDString(id), err
}

// sealAD is the associated data of a version 2 record: the chunk id and
// the key id, so neither can be changed without the payload failing to
// open.
func sealAD(id [sha256.Size]byte, key uint32) [sha256.Size + 4]byte {
	var ad [sha256.Size + 4]byte
	copy(ad[:], id[:])
	binary.BigEndian.PutUint32(ad[sha256.Size:], key)
	return ad
}

// seal encrypts plaintext with a random nonce; ad (the chunk id, and in
// version 2 the key id) is the associated data, so a payload moved to
// another record does not open.
func seal(aead cipher.AEAD, ad []byte, plaintext []byte) []byte {
	out := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	_, _ = rand.Read(out) // crypto/rand.Read never fails
	return aead.Seal(out, out, plaintext, ad)
}

// ErrWrongKey means the store was encrypted with another key.
var ErrWrongKey = errors.New("neither ENCRYPTION_KEY nor any of ENCRYPTION_PREVIOUS_KEYS is the key this data was stored with")

// ErrUnknownKey means a record was sealed with a key the store was not
// given.
var ErrUnknownKey = errors.New("sealed with a key that neither ENCRYPTION_KEY nor ENCRYPTION_PREVIOUS_KEYS holds")

func open(aead cipher.AEAD, ad []byte, payload []byte) ([]byte, error) {
	if len(payload) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: encrypted payload too short", ErrCorrupt)
	}
	pt, err := aead.Open(nil, payload[:aead.NonceSize()], payload[aead.NonceSize():], ad)
	if err != nil {
		return nil, fmt.Errorf("%w: decryption failed (wrong key or altered data)", ErrCorrupt)
	}
	return pt, nil
}
