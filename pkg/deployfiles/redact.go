package deployfiles

import (
	"net/url"
	"slices"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
)

// Redacted stands in for a secret in any output; RedactedChanged for one
// that a change would replace.
const (
	Redacted        = "<redacted>"
	RedactedChanged = "<redacted, changed>"
)

// RedactEnv returns env file content with every secret value replaced and
// any password in a URL value masked, for showing to a person.
func RedactEnv(env []byte) []byte { return redactEnv(env, nil) }

// RedactEnvChanges is RedactEnv that marks a secret whose value differs
// from old's as changed, so a diff of two redacted files still shows it.
func RedactEnvChanges(env []byte, old map[string]string) []byte {
	if old == nil {
		old = map[string]string{}
	}
	return redactEnv(env, old)
}

func redactEnv(env []byte, old map[string]string) []byte {
	lines := strings.SplitAfter(string(env), "\n")
	for i, line := range lines {
		body := strings.TrimRight(line, "\n")
		k, v, ok := strings.Cut(body, "=")
		if !ok || strings.HasPrefix(strings.TrimSpace(body), "#") || v == "" {
			continue
		}
		key := strings.TrimSpace(strings.TrimPrefix(k, "export "))
		switch {
		case slices.Contains(Secrets, key) || isSecretName(key):
			if pv, ok := old[key]; old != nil && (!ok || pv != v) {
				v = RedactedChanged
			} else {
				v = Redacted
			}
		default:
			if u, err := url.Parse(v); err == nil && u.User != nil {
				v = u.Redacted()
			}
		}
		lines[i] = k + "=" + v + line[len(body):]
	}
	return []byte(strings.Join(lines, ""))
}

// isSecretName catches secrets an operator added under a telling name.
func isSecretName(key string) bool {
	k := strings.ToUpper(key)
	for _, w := range []string{"SECRET", "TOKEN", "PASSWORD", "PASSWD", "PRIVATE_KEY", "API_KEY"} {
		if strings.Contains(k, w) {
			return true
		}
	}
	return strings.HasSuffix(k, "_KEY")
}

// Diff is a unified diff from old to new, labelled with path; empty when
// they are equal.
func Diff(path string, old, new []byte) string {
	if string(old) == string(new) {
		return ""
	}
	from := "a/" + path
	if old == nil {
		from = "/dev/null"
	}
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(old)), B: difflib.SplitLines(string(new)),
		FromFile: from, ToFile: "b/" + path, Context: 3,
	})
	if err != nil {
		return err.Error() // difflib fails only on writes to its buffer
	}
	return d
}
