package chain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/gowebpki/jcs"
)

// Transaction types.
const (
	TypeSessionAnchor = "session_anchor"
	TypeSystem        = "system"
)

// MaxTxBytes bounds one canonical transaction.
const MaxTxBytes = 16 << 10

// Transaction is one entry of the chain's log. Exactly one of Anchor and
// System is set, matching Type.
type Transaction struct {
	Type   string         `json:"type"`
	Anchor *SessionAnchor `json:"anchor,omitempty"`
	System *SystemChange  `json:"system,omitempty"`
}

// SessionAnchor commits a recorded session's Merkle root to the chain.
type SessionAnchor struct {
	SessionID    string `json:"session_id"`
	Owner        string `json:"owner"`
	ManifestHash string `json:"manifest_hash"`
	MerkleRoot   string `json:"merkle_root"`
	ChunkCount   int64  `json:"chunk_count"`
	StartedAt    string `json:"started_at"`
	EndedAt      string `json:"ended_at"`
}

// System actions.
const (
	ActionAddValidator    = "add_validator"
	ActionRemoveValidator = "remove_validator"
)

// SystemChange changes the chain's configuration or validator set.
type SystemChange struct {
	Action string `json:"action"`
	// Key is a validator's note verifier key (name+hash+keydata).
	Key string `json:"key,omitempty"`
	// Node is the consensus node id the validator runs as.
	Node string `json:"node,omitempty"`
}

// FieldError is one invalid field, for field-level API errors.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// FieldErrors is every invalid field of a value.
type FieldErrors []FieldError

func (fe FieldErrors) Error() string {
	var b bytes.Buffer
	for i, e := range fe {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s", e.Field, e.Message)
	}
	return b.String()
}

func (fe *FieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate checks every field and returns FieldErrors, or nil.
func (tx *Transaction) Validate() error {
	var fe FieldErrors
	switch tx.Type {
	case TypeSessionAnchor:
		if tx.System != nil {
			fe.add("system", "must be absent for type %s", tx.Type)
		}
		if tx.Anchor == nil {
			fe.add("anchor", "is required for type %s", tx.Type)
			break
		}
		tx.Anchor.validate(&fe, "anchor.")
	case TypeSystem:
		if tx.Anchor != nil {
			fe.add("anchor", "must be absent for type %s", tx.Type)
		}
		if tx.System == nil {
			fe.add("system", "is required for type %s", tx.Type)
			break
		}
		switch tx.System.Action {
		case ActionAddValidator, ActionRemoveValidator:
			if _, err := ParseVerifier(tx.System.Key); err != nil {
				fe.add("system.key", "%v", err)
			}
		default:
			fe.add("system.action", "must be %s or %s", ActionAddValidator, ActionRemoveValidator)
		}
	case "":
		fe.add("type", "is required")
	default:
		fe.add("type", "must be %s or %s", TypeSessionAnchor, TypeSystem)
	}
	if len(fe) > 0 {
		return fe
	}
	return nil
}

// maxTimeLen is the longest RFC 3339 time a new anchor may carry:
// nanoseconds and a numeric zone ("2006-01-02T15:04:05.999999999-07:00").
// time.Parse takes a fraction of any length, and the string goes on the
// chain as sent.
const maxTimeLen = len("2006-01-02T15:04:05.999999999-07:00")

// ValidateNew checks a transaction submitted for the chain: what Validate
// checks, and the rules that came after blocks were first sealed, which
// Validate, the rule for sealed blocks, must not gain (a chain sealed
// before them must still verify): an anchor's times at most nanosecond
// precise. With every field of an anchor bounded, its canonical form
// stays far below MaxTxBytes, so nothing anchoring queues or a seal
// freezes is refused by the engine for its size; a validator key in its
// canonical spelling (CanonicalVerifier).
func (tx *Transaction) ValidateNew() error {
	if err := tx.Validate(); err != nil {
		return err
	}
	if tx.System != nil {
		if err := CanonicalVerifier(tx.System.Key); err != nil {
			return FieldErrors{{Field: "system.key", Message: err.Error()}}
		}
	}
	if tx.Anchor == nil {
		return nil
	}
	var fe FieldErrors
	tx.Anchor.validateNew(&fe, "anchor.")
	if len(fe) > 0 {
		return fe
	}
	return nil
}

// ValidateNew checks a session anchor submitted for the chain, as
// Transaction.ValidateNew does, naming its fields without a prefix.
func (a *SessionAnchor) ValidateNew() error {
	var fe FieldErrors
	a.validate(&fe, "")
	a.validateNew(&fe, "")
	if len(fe) > 0 {
		return fe
	}
	return nil
}

func (a *SessionAnchor) validateNew(fe *FieldErrors, prefix string) {
	if len(a.StartedAt) > maxTimeLen {
		fe.add(prefix+"started_at", "must be at most %d characters (nanoseconds at most)", maxTimeLen)
	}
	if len(a.EndedAt) > maxTimeLen {
		fe.add(prefix+"ended_at", "must be at most %d characters (nanoseconds at most)", maxTimeLen)
	}
}

// Validate checks a session anchor; prefix names its fields in errors.
func (a *SessionAnchor) Validate() error {
	var fe FieldErrors
	a.validate(&fe, "")
	if len(fe) > 0 {
		return fe
	}
	return nil
}

func (a *SessionAnchor) validate(fe *FieldErrors, prefix string) {
	if u, err := uuid.Parse(a.SessionID); err != nil || u.String() != a.SessionID {
		fe.add(prefix+"session_id", "must be a lower-case UUID")
	}
	if a.Owner == "" || len(a.Owner) > 256 {
		fe.add(prefix+"owner", "must be 1 to 256 bytes")
	}
	if !hex64.MatchString(a.ManifestHash) {
		fe.add(prefix+"manifest_hash", "must be 64 lower-case hex characters (SHA-256)")
	}
	if !hex64.MatchString(a.MerkleRoot) {
		fe.add(prefix+"merkle_root", "must be 64 lower-case hex characters (SHA-256)")
	}
	if a.ChunkCount < 0 || a.ChunkCount > 1<<40 {
		fe.add(prefix+"chunk_count", "must be between 0 and 2^40")
	}
	start, err1 := time.Parse(time.RFC3339, a.StartedAt)
	if err1 != nil {
		fe.add(prefix+"started_at", "must be an RFC 3339 time")
	}
	end, err2 := time.Parse(time.RFC3339, a.EndedAt)
	if err2 != nil {
		fe.add(prefix+"ended_at", "must be an RFC 3339 time")
	}
	if err1 == nil && err2 == nil && end.Before(start) {
		fe.add(prefix+"ended_at", "must not be before started_at")
	}
}

// Encode returns the canonical RFC 8785 form of tx.
func (tx *Transaction) Encode() ([]byte, error) {
	raw, err := json.Marshal(tx)
	if err != nil {
		return nil, err
	}
	return jcs.Transform(raw)
}

// TxID is the hex SHA-256 of a canonical transaction.
func TxID(canonical []byte) string {
	sum := sha256.Sum256(canonical)
	return hex.EncodeToString(sum[:])
}

// Errors of DecodeTransaction.
var (
	ErrNotCanonical = errors.New("transaction is not in canonical form (RFC 8785)")
	ErrTooLarge     = errors.New("transaction is too large")
)

// DecodeTransaction parses a canonical transaction strictly: unknown fields,
// trailing data and non-canonical encodings are refused.
func DecodeTransaction(b []byte) (*Transaction, error) {
	tx, err := ParseTransaction(b)
	if err != nil {
		return nil, err
	}
	canon, err := tx.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(canon, b) {
		return nil, ErrNotCanonical
	}
	return tx, nil
}

// ParseTransaction parses any JSON form of a transaction strictly (unknown
// fields and trailing data refused); Encode then gives its canonical form.
func ParseTransaction(b []byte) (*Transaction, error) {
	if len(b) > MaxTxBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(b), MaxTxBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var tx Transaction
	if err := dec.Decode(&tx); err != nil {
		return nil, fmt.Errorf("transaction: %w", err)
	}
	if dec.More() {
		return nil, errors.New("transaction: trailing data")
	}
	return &tx, nil
}
