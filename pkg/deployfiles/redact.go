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
	quote := byte(0) // inside a multi-line quoted value: every line is hidden
	for i, line := range lines {
		body := strings.TrimRight(line, "\r\n")
		if quote != 0 {
			if strings.IndexByte(body, quote) >= 0 {
				quote = 0
			}
			lines[i] = Redacted + line[len(body):]
			continue
		}
		// A key ends at its first "=" or, as compose reads the file
		// (YAML style), ":"; neither can be part of one.
		end := strings.IndexAny(body, "=:")
		if end < 0 || strings.HasPrefix(strings.TrimSpace(body), "#") {
			continue
		}
		v := strings.TrimLeft(body[end+1:], " \t")
		k, sep := body[:end], body[end:len(body)-len(v)] // the separator and the blanks after it
		if v == "" {
			continue
		}
		if q := v[0]; (q == '\'' || q == '"') && strings.IndexByte(v[1:], q) < 0 {
			quote = q // the value goes on past this line
		}
		key := strings.TrimSpace(strings.TrimPrefix(k, "export "))
		switch {
		case slices.Contains(Secrets, key) || slices.Contains(ClusterSecrets, key) || slices.Contains(PreviousKeys, key) ||
			key == ConsulConfigKey || isSecretName(key) || quote != 0:
			// Consul's configuration holds its management token (and a
			// cluster's gossip key).
			if pv, ok := old[key]; old != nil && (!ok || pv != unquote(v)) {
				v = RedactedChanged
			} else {
				v = Redacted
			}
		default:
			v = redactURL(unquote(v), v)
		}
		lines[i] = k + sep + v + line[len(body):]
	}
	return []byte(strings.Join(lines, ""))
}

// redactURL masks the password of a URL value; a value that looks like it
// carries credentials but does not parse is hidden whole.
func redactURL(value, raw string) string {
	if !strings.Contains(value, "://") || !strings.Contains(value, "@") {
		return raw
	}
	if u, err := url.Parse(value); err == nil && u.User != nil {
		return u.Redacted()
	}
	return Redacted
}

// unquote strips one pair of matching quotes.
func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
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

// Diff is a unified diff from old to cur, labelled with path; empty when
// they are equal.
func Diff(path string, old, cur []byte) string {
	if string(old) == string(cur) {
		return ""
	}
	from := "a/" + path
	if old == nil {
		from = "/dev/null"
	}
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(old)), B: difflib.SplitLines(string(cur)),
		FromFile: from, ToFile: "b/" + path, Context: 3,
	})
	if err != nil {
		return err.Error() // difflib fails only on writes to its buffer
	}
	return d
}
