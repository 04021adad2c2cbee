package envfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValue pins the rule: plain text bare, what single quotes keep intact
// for both parsers quoted, the rest refused by key.
func TestValue(t *testing.T) {
	for _, tc := range []struct {
		name, value, want string
		refused           bool
	}{
		{name: "empty", value: "", want: ""},
		{name: "secret", value: "Ab09", want: "Ab09"},
		{name: "url", value: "redis://lucid-redis:6379/0", want: "redis://lucid-redis:6379/0"},
		{name: "equals and percent", value: "a=b%c", want: "a=b%c"},
		{name: "space", value: "a b", want: "'a b'"},
		{name: "leading and trailing space", value: " a ", want: "' a '"},
		{name: "hash", value: "#a #b", want: "'#a #b'"},
		{name: "dollar name", value: "$VAR", want: "'$VAR'"},
		{name: "double dollar", value: "$$", want: "'$$'"},
		{name: "trailing dollar", value: "a$", want: "'a$'"},
		{name: "double quote", value: `say "hi"`, want: `'say "hi"'`},
		{name: "backtick", value: "`id`", want: "'`id`'"},
		{name: "unicode", value: "päss語😀\u200f", want: "'päss語😀\u200f'"},
		{name: "line separator", value: "a\u2028b", want: "'a\u2028b'"},
		{name: "backslash", value: `a\b`, refused: true},
		{name: "trailing backslash", value: `a\`, refused: true},
		{name: "escaped quote", value: `\'`, refused: true},
		{name: "single quote", value: "it's", refused: true},
		{name: "braced variable", value: "${HOME}", refused: true},
		{name: "tab", value: "a\tb", refused: true},
		{name: "LF", value: "a\nb", refused: true},
		{name: "CR", value: "a\rb", refused: true},
		{name: "NUL", value: "a\x00b", refused: true},
		{name: "DEL", value: "a\x7fb", refused: true},
		{name: "NEL", value: "a\u0085b", refused: true},
		{name: "not UTF-8", value: "a\xffb", refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Value("SOME_KEY", tc.value)
			if tc.refused {
				if err == nil {
					t.Fatalf("Value = %q, want a refusal", got)
				}
				if got != "" || !strings.Contains(err.Error(), "SOME_KEY") || strings.Contains(err.Error(), tc.value) {
					t.Errorf("Value = %q, %v: want no text and an error that names the key, not the value", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Value = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestValueRefusesKeysThatAreNotNames(t *testing.T) {
	for _, k := range []string{"", "1A", "A B", "A=B", "A\nB", "#A", "A'"} {
		if _, err := Value(k, "x"); err == nil {
			t.Errorf("key %q accepted", k)
		}
	}
	for _, k := range []string{"A", "_a", "a.b-c_1"} {
		if _, err := Value(k, "x"); err != nil {
			t.Errorf("key %q: %v", k, err)
		}
	}
}

func TestAddMissingRefusesWhatItCannotWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".env")
	const old = "A=1\n"
	if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := AddMissing(p, map[string]string{"B": "fine", "SECRET": `TOPSECRET\`})
	if err == nil || !strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "TOPSECRET") {
		t.Fatalf("AddMissing = %v; want a refusal naming SECRET without its value", err)
	}
	if data, _ := os.ReadFile(p); string(data) != old {
		t.Errorf("file changed after a refusal: %q", data)
	}

	added, err := AddMissing(p, map[string]string{"B": "a b #c $D"})
	if err != nil || len(added) != 1 {
		t.Fatalf("AddMissing = %v, %v", added, err)
	}
	if vars, err := Read(p); err != nil || vars["B"] != "a b #c $D" {
		t.Errorf("read back %q, %v", vars["B"], err)
	}
}
