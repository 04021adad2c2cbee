package deployfiles

import (
	"fmt"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
)

// Rotation describes rotating one secret of the operator's env file
// without downtime (keyring.PreviousVar names the ones that can be).
type Rotation struct {
	// Key is the secret: JWT_SECRET_KEY, LUCID_MESH_TOKEN or ENCRYPTION_KEY.
	Key string
	Now time.Time
	// Overlap is how long the old value keeps being accepted: for
	// JWT_SECRET_KEY the longest lifetime of a token issued with it, for
	// LUCID_MESH_TOKEN until every service has restarted with the new one.
	// ENCRYPTION_KEY's old value stays until removed (Prune), since it is
	// needed until a compaction has re-encrypted what it sealed.
	Overlap time.Duration
	// NewSecret generates the new value (default envfile.NewSecret).
	NewSecret func(n int) string
}

// Rotate returns the changes to the operator's values (values) that
// rotate r.Key: a new value, and the old one added to the previous values
// with its retirement time (Now + Overlap), retired previous values
// dropped. Errors never hold a value.
func Rotate(values map[string]string, r Rotation) (map[string]string, error) {
	prevVar, ok := keyring.PreviousVar[r.Key]
	if !ok {
		return nil, fmt.Errorf("%s cannot be rotated without downtime (one of: %s)", r.Key, strings.Join(keyring.Rotatable(), ", "))
	}
	cur := values[r.Key]
	if cur == "" {
		return nil, fmt.Errorf("%s is not set: there is nothing to rotate (lucidctl render generates it)", r.Key)
	}
	entries, err := keyring.Parse(values[prevVar])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", prevVar, err)
	}
	entries = keyring.Active(entries, r.Now)
	old := keyring.Entry{Value: []byte(cur)}
	if r.Key != "ENCRYPTION_KEY" {
		if r.Overlap <= 0 {
			return nil, fmt.Errorf("rotating %s needs a positive overlap, got %s", r.Key, r.Overlap)
		}
		old.Until = r.Now.Add(r.Overlap).UTC().Truncate(time.Second)
	}
	if !keyring.Contains(entries, old.Value) {
		entries = append(entries, old)
	}
	gen := r.NewSecret
	if gen == nil {
		gen = envfile.NewSecret
	}
	next := gen(secretLength)
	for next == cur || keyring.Contains(entries, []byte(next)) {
		next = gen(secretLength)
	}
	return map[string]string{r.Key: next, prevVar: keyring.Format(entries)}, nil
}

// Prune returns the changes to values that drop the previous values
// retired at now, and how many were dropped. ENCRYPTION_KEY's previous
// values have no retirement time; with encryption set, they are dropped
// too (only once the data chain's status shows no record needs them).
func Prune(values map[string]string, now time.Time, encryption bool) (map[string]string, int, error) {
	set := map[string]string{}
	dropped := 0
	for _, k := range keyring.Rotatable() {
		prevVar := keyring.PreviousVar[k]
		entries, err := keyring.Parse(values[prevVar])
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", prevVar, err)
		}
		keep := keyring.Active(entries, now)
		if k == "ENCRYPTION_KEY" && encryption {
			keep = nil
		}
		if len(keep) != len(entries) {
			dropped += len(entries) - len(keep)
			set[prevVar] = keyring.Format(keep)
		}
	}
	return set, dropped, nil
}
