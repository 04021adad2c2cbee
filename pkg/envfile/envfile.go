// Package envfile reads and extends the env files (`KEY=value` lines) that
// hold Lucid's secrets, such as configs/environment/.env.core.
//
// Files are parsed with compose-go's dotenv parser, so lucidctl reads them
// exactly as `docker compose` does. Values are written with Value, in a form
// that compose-go and docker-compose v1's python-dotenv both read back
// unchanged, or refused. Writes are atomic (a temporary file, then
// a rename) and leave the file with mode 0600: a reader sees the old file or
// the new one, never half of one, and no other user can read the secrets.
package envfile

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// Mode is the permission env files are written with.
const Mode fs.FileMode = 0o600

// Read parses the env file at path. Variables are not expanded from the
// process environment: what is in the file is what counts.
func Read(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	vars, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	return vars, nil
}

// Parse parses env file content as Read does.
func Parse(data []byte) (map[string]string, error) {
	vars, err := dotenv.UnmarshalBytesWithLookup(data, func(string) (string, bool) { return "", false })
	if err != nil {
		// The parser quotes the offending text, which may be a secret.
		return nil, syntaxError(data)
	}
	return vars, nil
}

// syntaxError names the first line the parser refuses, without its text.
func syntaxError(data []byte) error {
	lines := bytes.SplitAfter(data, []byte("\n"))
	var upTo []byte
	for i, line := range lines {
		upTo = append(upTo, line...)
		if _, err := dotenv.UnmarshalBytesWithLookup(upTo, func(string) (string, bool) { return "", false }); err != nil {
			return fmt.Errorf("line %d: syntax error (the value is not shown; it may be a secret)", i+1)
		}
	}
	return errors.New("syntax error (the value is not shown; it may be a secret)")
}

// secretAlphabet needs no quoting in any env file or compose version: no $,
// quotes, spaces, # or backslashes.
const secretAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// NewSecret returns n characters from crypto/rand, uniformly over an
// alphabet that is safe in env files unquoted (about 5.95 bits each).
func NewSecret(n int) string {
	out := make([]byte, n)
	// Reject bytes that would bias the distribution: 256 is not a multiple
	// of 62, so only bytes below 248 (= 4*62) are used.
	limit := byte(len(secretAlphabet) * (256 / len(secretAlphabet)))
	var buf [64]byte
	for i := 0; i < n; {
		_, _ = rand.Read(buf[:]) // crypto/rand.Read never fails
		for _, b := range buf {
			if b < limit && i < n {
				out[i] = secretAlphabet[int(b)%len(secretAlphabet)]
				i++
			}
		}
	}
	return string(out)
}

// AddMissing appends to the env file at path each key of values that the
// file does not define yet (an empty value counts as missing), creating the
// file and its directory if needed. Existing lines are kept byte for byte.
// Values are written with Value; if one cannot be, nothing is written and
// the error names its key. It returns the keys it added, sorted.
func AddMissing(path string, values map[string]string) ([]string, error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	have := map[string]string{}
	if len(old) > 0 {
		if have, err = Read(path); err != nil {
			return nil, err
		}
	}
	var added []string
	for k := range values {
		if have[k] == "" {
			added = append(added, k)
		}
	}
	if len(added) == 0 {
		return nil, nil
	}
	slices.Sort(added)

	var buf bytes.Buffer
	buf.Write(old)
	if len(old) > 0 && old[len(old)-1] != '\n' {
		buf.WriteByte('\n')
	}
	for _, k := range added {
		v, err := Value(k, values[k])
		if err != nil {
			return nil, fmt.Errorf("env file %s: %w", path, err) // nothing written
		}
		fmt.Fprintf(&buf, "%s=%s\n", k, v)
	}
	if err := WriteAtomic(path, buf.Bytes()); err != nil {
		return nil, err
	}
	return added, nil
}

// WriteAtomic replaces the file at path with data, mode 0600, whole or
// not at all, and durably; it creates the folder if missing.
func WriteAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(path, data, Mode); err != nil {
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	return nil
}

// Set gives each key of values its value in the env file at path (created
// with its directory if missing): a line that defines the key is replaced,
// a key the file lacks is appended, and every other line is kept byte for
// byte. The result is read back before it is written; if any other key's
// value would change (a value quoted over several lines), nothing is
// written. It returns the keys whose value changed, sorted.
func Set(path string, values map[string]string) ([]string, error) {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read env file %s: %w", path, err)
	}
	data, changed, err := Update(path, old, values)
	if err != nil || len(changed) == 0 {
		return nil, err
	}
	if err := WriteAtomic(path, data); err != nil {
		return nil, err
	}
	return changed, nil
}

// Update is Set on the content of an env file rather than the file: it
// returns the new content and the keys whose value changed, sorted, and
// data itself when none did. name labels errors (a path); they never
// hold a value.
func Update(name string, data []byte, values map[string]string) ([]byte, []string, error) {
	have := map[string]string{}
	if len(data) > 0 {
		var err error
		if have, err = Parse(data); err != nil {
			return nil, nil, fmt.Errorf("read env file %s: %w", name, err)
		}
	}
	var changed []string
	for k, v := range values {
		if cur, ok := have[k]; !ok || cur != v {
			changed = append(changed, k)
		}
	}
	if len(changed) == 0 {
		return data, nil, nil
	}
	slices.Sort(changed)
	lines := make(map[string]string, len(changed))
	for _, k := range changed {
		v, err := Value(k, values[k])
		if err != nil {
			return nil, nil, fmt.Errorf("env file %s: %w", name, err) // nothing written
		}
		lines[k] = k + "=" + v
	}
	var buf bytes.Buffer
	done := map[string]bool{}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if k := definedKey(line); lines[k] != "" {
			buf.WriteString(lines[k] + "\n")
			done[k] = true
			continue
		}
		buf.Write(line)
	}
	if buf.Len() > 0 && buf.Bytes()[buf.Len()-1] != '\n' {
		buf.WriteByte('\n')
	}
	for _, k := range changed {
		if !done[k] {
			buf.WriteString(lines[k] + "\n")
		}
	}
	got, err := Parse(buf.Bytes())
	if err != nil {
		return nil, nil, fmt.Errorf("env file %s: cannot set %s in place (%w); nothing was written", name, strings.Join(changed, ", "), err)
	}
	for k := range have {
		if _, set := values[k]; !set && got[k] != have[k] {
			return nil, nil, fmt.Errorf("env file %s: setting %s would change %s (a value over several lines?); nothing was written", name, strings.Join(changed, ", "), k)
		}
	}
	for k, v := range values {
		if got[k] != v {
			return nil, nil, fmt.Errorf("env file %s: %s would not read back as set; nothing was written", name, k)
		}
	}
	return buf.Bytes(), changed, nil
}

// definedKey is the key a KEY=value line defines (an `export ` prefix
// allowed), or "".
func definedKey(line []byte) string {
	s := strings.TrimSpace(string(line))
	s = strings.TrimPrefix(s, "export ")
	k, _, ok := strings.Cut(s, "=")
	if !ok || strings.HasPrefix(s, "#") {
		return ""
	}
	return strings.TrimSpace(k)
}
