// Package keyring reads and writes the variables that hold a secret's
// previous values after a rotation (JWT_PREVIOUS_KEYS,
// ENCRYPTION_PREVIOUS_KEYS, LUCID_MESH_PREVIOUS_TOKENS), so a new value
// can take over while what the old one made (tokens, enrolments, sealed
// packs) keeps working until it is retired.
//
// A variable is a comma-separated list of entries; an entry is the value
// in unpadded base64url, optionally followed by "@" and the RFC 3339 time
// after which it no longer counts. base64url and RFC 3339 hold neither ","
// nor "@", so any value round-trips, whatever bytes it has.
package keyring

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The variables holding previous values, and the secrets they follow.
const (
	JWTPrevious        = "JWT_PREVIOUS_KEYS"
	EncryptionPrevious = "ENCRYPTION_PREVIOUS_KEYS"
	MeshPrevious       = "LUCID_MESH_PREVIOUS_TOKENS"
)

// PreviousVar names, for each secret that can be rotated without downtime,
// the variable holding its previous values.
var PreviousVar = map[string]string{
	"JWT_SECRET_KEY":   JWTPrevious,
	"ENCRYPTION_KEY":   EncryptionPrevious,
	"LUCID_MESH_TOKEN": MeshPrevious,
}

// Rotatable lists the keys of PreviousVar, sorted.
func Rotatable() []string {
	out := make([]string, 0, len(PreviousVar))
	for k := range PreviousVar {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Entry is one previous value.
type Entry struct {
	Value []byte
	// Until is when the value stops counting; zero means until the
	// operator removes it (encryption keys: until no record needs it).
	Until time.Time
}

// Retired reports whether e no longer counts at now.
func (e Entry) Retired(now time.Time) bool { return !e.Until.IsZero() && !now.Before(e.Until) }

// Parse reads a variable's value; empty is no entries. An error names the
// entry by position, never its value.
func Parse(s string) ([]Entry, error) {
	var out []Entry
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		enc, until, timed := strings.Cut(part, "@")
		v, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil || len(v) == 0 {
			return nil, fmt.Errorf("entry %d is not a value in unpadded base64url", i+1)
		}
		e := Entry{Value: v}
		if timed {
			t, err := time.Parse(time.RFC3339, until)
			if err != nil {
				return nil, fmt.Errorf("entry %d: the time after @ is not RFC 3339 (like 2026-12-06T15:00:00Z)", i+1)
			}
			e.Until = t.UTC()
		}
		out = append(out, e)
	}
	return out, nil
}

// Format writes entries as a variable's value.
func Format(entries []Entry) string {
	parts := make([]string, len(entries))
	for i, e := range entries {
		parts[i] = base64.RawURLEncoding.EncodeToString(e.Value)
		if !e.Until.IsZero() {
			parts[i] += "@" + e.Until.UTC().Format(time.RFC3339)
		}
	}
	return strings.Join(parts, ",")
}

// Active returns the entries that still count at now.
func Active(entries []Entry, now time.Time) []Entry {
	var out []Entry
	for _, e := range entries {
		if !e.Retired(now) {
			out = append(out, e)
		}
	}
	return out
}

// Contains reports whether value is among entries.
func Contains(entries []Entry, value []byte) bool {
	for _, e := range entries {
		if string(e.Value) == string(value) {
			return true
		}
	}
	return false
}
