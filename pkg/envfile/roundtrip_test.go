package envfile_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/envfile"
)

// randomCases is how many generated values join the fixed corpus.
const randomCases = 3000

// batchSize values share one env file (and one docker-compose run).
const batchSize = 800

// TestValueRoundTripsHostileValues: every hostile value is either refused by
// Value (the error names the key and not the value) or, written as
// KEY_n=<text> among hundreds of others, reads back byte for byte through
// compose-go (envfile.Read) and through docker-compose v1's python-dotenv.
// Every value line is followed by NEXT_n=after-n, and no other key may
// appear, so a value that swallowed or split lines is caught either way.
// A refused value is written as KEY_n= with Value's empty text.
//
// The random values come from a seeded generator; the seed is logged, and
// LUCID_ENVFILE_SEED=<seed> repeats a run.
func TestValueRoundTripsHostileValues(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LUCID_ENVFILE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("LUCID_ENVFILE_SEED: %v", err)
		}
	}
	t.Logf("seed %d (LUCID_ENVFILE_SEED=%d repeats this run)", seed, seed)
	values := append(hostileCorpus(), randomValues(rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), randomCases)...)

	batches := writeBatches(t, values)
	t.Logf("%d values: %d accepted, %d refused, in %d files", len(values), accepted(batches), len(values)-accepted(batches), len(batches))
	if accepted(batches) < len(values)/4 {
		t.Errorf("only %d of %d values accepted: the test says little about what is written", accepted(batches), len(values))
	}

	t.Run("compose-go", func(t *testing.T) {
		for _, b := range batches {
			got, err := envfile.Read(b.path)
			if err != nil {
				t.Errorf("%s: %v", b.path, err)
				continue
			}
			b.compare(t, "envfile.Read", toPointers(got))
		}
	})

	t.Run("docker-compose-v1", func(t *testing.T) {
		bin := testenv.ComposeV1(t)
		for _, b := range batches {
			t.Run(filepath.Base(b.path), func(t *testing.T) {
				t.Parallel()
				b.compare(t, "docker-compose config", composeConfigEnv(t, bin, b.path))
			})
		}
	})
}

// batch is one env file and what it must read back as.
type batch struct {
	path string
	want map[string]string
	// accepted counts the values Value wrote.
	accepted int
}

func accepted(bs []batch) int {
	n := 0
	for _, b := range bs {
		n += b.accepted
	}
	return n
}

// writeBatches checks Value on every value and writes the env files.
func writeBatches(t *testing.T, values []string) []batch {
	t.Helper()
	dir := t.TempDir()
	var out []batch
	for start := 0; start < len(values); start += batchSize {
		b := batch{path: filepath.Join(dir, fmt.Sprintf("values-%03d.env", len(out))), want: map[string]string{}}
		var file bytes.Buffer
		file.WriteString("# hostile values, each followed by a NEXT_n line\n")
		for i := start; i < min(start+batchSize, len(values)); i++ {
			v := values[i]
			key, next := fmt.Sprintf("KEY_%d", i), fmt.Sprintf("NEXT_%d", i)
			text, err := envfile.Value(key, v)
			if err != nil {
				if text != "" || !strings.Contains(err.Error(), key) || (v != "" && strings.Contains(err.Error(), v)) {
					t.Errorf("%s = %s: refused as %q, %q; want no text and an error naming the key, not the value", key, show(v), text, err)
				}
				b.want[key] = ""
			} else {
				b.want[key] = v
				b.accepted++
			}
			fmt.Fprintf(&file, "%s=%s\n%s=after-%d\n", key, text, next, i)
			b.want[next] = fmt.Sprintf("after-%d", i)
		}
		if err := os.WriteFile(b.path, file.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// compare reports every key whose value differs and every key too many or
// missing; got holds nil for a key read without a value.
func (b batch) compare(t *testing.T, reader string, got map[string]*string) {
	t.Helper()
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 20 {
			t.Errorf("%s, %s: "+format, append([]any{reader, filepath.Base(b.path)}, args...)...)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b.want)) {
		want := b.want[k]
		switch g, ok := got[k]; {
		case !ok:
			report("%s missing (wrote %s)", k, show(want))
		case g == nil:
			report("%s read without a value (wrote %s)", k, show(want))
		case *g != want:
			report("%s = %s", k, showDiff(*g, want))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := b.want[k]; ok {
			continue
		}
		v := "no value"
		if got[k] != nil {
			v = show(*got[k])
		}
		report("unexpected key %q = %s", k, v)
	}
	if bad > 20 {
		t.Errorf("%s, %s: %d differences in all", reader, filepath.Base(b.path), bad)
	}
}

// composeConfigEnv runs `docker-compose config` on a compose file whose one
// service reads envFile, and returns that service's environment. config only
// parses: DOCKER_HOST points nowhere to prove no daemon is needed.
func composeConfigEnv(t *testing.T, bin, envFile string) map[string]*string {
	t.Helper()
	dir := t.TempDir()
	compose := filepath.Join(dir, "docker-compose.yml")
	spec := "services:\n  probe:\n    image: busybox\n    env_file: " + strconv.Quote(envFile) + "\n"
	if err := os.WriteFile(compose, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-f", compose, "--project-directory", dir, "config")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+filepath.Join(dir, "no-daemon.sock"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, stderr.String())
	}
	// python-dotenv warns, and goes on, when it cannot parse a statement.
	if strings.Contains(stderr.String(), "could not parse") {
		t.Errorf("docker-compose config: %s", stderr.String())
	}
	var out struct {
		Services map[string]struct {
			Environment map[string]*string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(stdout.Bytes(), &out); err != nil {
		t.Fatalf("docker-compose config output: %v", err)
	}
	env := out.Services["probe"].Environment
	for k, v := range env {
		if v != nil {
			// config writes each $ as $$ so that its output is itself a
			// valid compose file; the container gets one $.
			s := strings.ReplaceAll(*v, "$$", "$")
			env[k] = &s
		}
	}
	return env
}

func toPointers(m map[string]string) map[string]*string {
	out := make(map[string]*string, len(m))
	for k, v := range m {
		out[k] = &v
	}
	return out
}

// show quotes a test value for a failure message, shortened when long.
func show(v string) string {
	if len(v) > 80 {
		return fmt.Sprintf("%q... (%d bytes)", v[:80], len(v))
	}
	return strconv.Quote(v)
}

// showDiff shows where a long value read back differs from what was written.
func showDiff(got, want string) string {
	if len(got) <= 80 && len(want) <= 80 {
		return show(got) + ", wrote " + show(want)
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(0, i-20)
	return fmt.Sprintf("%d bytes, wrote %d; from byte %d read %q, wrote %q", len(got), len(want), from,
		got[from:min(len(got), i+40)], want[from:min(len(want), i+40)])
}

// hostileCorpus is every kind of value known, or feared, to trip an env
// file parser.
func hostileCorpus() []string {
	return []string{
		"",
		// Backslashes: escapes inside quotes, and a trailing one escapes the
		// closing quote.
		`\`, `a\`, `a\\`, `\\`, `a\b`, `\n`, `\'`, `a\'`, `\"`, `\$HOME`, `C:\Users\x`,
		// Dollars: compose-go expands them unquoted, python-dotenv expands
		// ${...} everywhere.
		"$VAR", "${X}", "${X:-default}", "${X-d}", "$${X}", "$", "$$", "a$", "$$VAR", "$1", "${", "$}", "{X}", "pa$$word",
		// Comments.
		"#", "#start", "mid#dle", "mid #dle", "end #", "a\t#b", " #",
		// Spaces and tabs at the edges.
		" ", "  ", " lead", "trail ", "  both  ", "\tlead", "trail\t", "\t", " \t ",
		// Separators and quotes.
		"=", "==", "a=b", "=a", "x=y=z", ":", "a:b",
		"'", "''", "'a'", "it's", `"`, `""`, `"a"`, `say "hi"`, "`", "`id`", "$(id)", `'"'`, `"'"`,
		// Unicode: multi-byte, RTL marks and overrides, joiners, BOM, spaces
		// outside ASCII, line separators, noncharacters.
		"päss", "日本語", "😀", "👩‍💻", "\u200f", "\u200e", "a\u202eb", "\u2067x\u2069", "\u200d", "\ufeff", "a\ufeffb",
		"\u00a0", "\u00a0x\u00a0", "\u3000", "\u2003x", "\u2028", "a\u2029b", "\ufffe", "\U0010ffff", "\u0301",
		// Control characters.
		"\x00", "a\x00b", "\r", "\n", "a\r\nb", "a\nB=x", "a\rB=x", "\x1b[31m", "\x7f", "\u0085", "\x0b", "\x0c", "\x01",
		// Not UTF-8.
		"\xff", "a\xc3", "\xed\xa0\x80",
		// What YAML or a shell might make something else of.
		"true", "yes", "no", "n", "null", "~", "0o17", "1e3", "0x1F", "- a", ": x", "{a: b}", "[1]", "*a", "&a", "!tag", "%x", "@x", "|", ">",
		"export", "export X=1", ";", "a;b", "a|b", "a&&b", "<x>",
		// Realistic awkward secrets.
		"redis://:pa ss #x@h:6379/0", "mongodb://u:se#cr%zz@h", "p@$$w0rd!", "abc$def$HOMEghi#jkl mno",
		// Very long values.
		strings.Repeat("a", 100_000),
		strings.Repeat("Ab9 $x#é=\"`", 6000),
	}
}

// awkward are the characters the random values are made of, mostly: those
// in some parser's grammar and those outside ASCII.
var awkward = []rune{
	'\\', '\'', '"', '`', '$', '$', '{', '}', '#', '#', ' ', ' ', '\t', '=', ':', '\n', '\r', 0, 0x7f, 0x1b, 0x85,
	'\u200f', '\u202e', '\u200d', '\ufeff', '\u00a0', '\u2028', '\u3000', 'é', '語', '😀',
	'-', '%', '@', '!', '*', ';', '|', '&', '<', '>', '(', ')', '[', ']', '~', '^', ',', '.', '/', '?',
}

// refusing are the characters of awkward that Value is expected to refuse
// on sight; half the random values go without them, so that many are
// written and read back rather than refused.
const refusing = "\\'\t\n\r\x00\x7f\x1b\u0085\u2028"

// randomValues returns n values over awkward and ASCII letters.
func randomValues(r *rand.Rand, n int) []string {
	var writable []rune
	for _, c := range awkward {
		if !strings.ContainsRune(refusing, c) {
			writable = append(writable, c)
		}
	}
	const plain = "abcXYZ019_"
	out := make([]string, n)
	for i := range out {
		anything := i%2 == 0
		pool := awkward
		if !anything {
			pool = writable
		}
		size := r.IntN(24)
		if r.IntN(50) == 0 {
			size = r.IntN(5000)
		}
		var b strings.Builder
		for range size {
			switch k := r.IntN(100); {
			case k < 60:
				b.WriteRune(pool[r.IntN(len(pool))])
			case k == 99 && anything:
				b.WriteByte(0xff) // not UTF-8
			default:
				b.WriteByte(plain[r.IntN(len(plain))])
			}
		}
		out[i] = b.String()
	}
	return out
}
