package envfile

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// An env file is read by two different parsers: compose-go's dotenv
// (docker compose v2, lucidctl) and python-dotenv 0.x (docker-compose v1).
// They agree on little beyond plain text:
//
//   - Inside single quotes compose-go keeps a backslash unless it precedes
//     the quote; python-dotenv turns \\ into \ and \' into '. A trailing
//     backslash escapes the closing quote in both, and the value runs on
//     into the following lines.
//   - python-dotenv expands ${NAME} from the process environment even inside
//     single quotes, and nothing escapes it; compose-go expands nothing there.
//   - Unquoted, compose-go expands $NAME and turns $$ into $; python-dotenv
//     does neither.
//   - python-dotenv reads the file in text mode, which turns CR into LF, and
//     a file that is not UTF-8 fails as a whole.
//
// So Value writes plain text bare, everything else it can in single quotes,
// and refuses the rest.

// bareValue needs no quoting for either parser: no $, quotes, spaces, # or
// backslashes.
var bareValue = regexp.MustCompile(`^[A-Za-z0-9_./:@,+=%-]*$`)

// keyName is a variable name both parsers read up to its '=' and that
// compose-go does not drop (it ignores names starting with a digit).
var keyName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// Value returns the text to write after "key=" in an env file so that both
// compose parsers read value back byte for byte: value itself when it is
// plain, else value in single quotes. It refuses a value with a backslash, a
// single quote, "${", a control character (CR, LF, tab and NUL included) or
// bytes that are not UTF-8, and a key that is not a variable name. The error
// names the key, never the value.
func Value(key, value string) (string, error) {
	if !keyName.MatchString(key) {
		return "", fmt.Errorf("env file key %q: not a variable name (letters, digits, _ . -, not starting with a digit)", key)
	}
	if bareValue.MatchString(value) {
		return value, nil
	}
	if why := unquotable(value); why != "" {
		// The reason must not quote the value: it may be a secret.
		return "", fmt.Errorf("%s: a value with %s cannot be written to an env file so that docker compose and docker-compose v1 surely read it back unchanged (the value is not shown)", key, why)
	}
	return "'" + value + "'", nil
}

// unquotable says what keeps value out of single quotes, "" if nothing.
func unquotable(value string) string {
	switch {
	case !utf8.ValidString(value):
		return "bytes that are not UTF-8"
	case strings.Contains(value, `\`):
		return "a backslash"
	case strings.Contains(value, "'"):
		return "a single quote"
	case strings.Contains(value, "${"):
		return "a dollar sign followed by a brace"
	}
	for _, r := range value {
		// python-dotenv reads CR as LF, and no environment variable can
		// hold NUL. The other controls (LF, tab, C1) survive both parsers
		// inside quotes today, but a secret never needs them, and
		// line-oriented readers of env files would split at LF.
		if unicode.IsControl(r) {
			return "a control character or line break"
		}
	}
	return ""
}
