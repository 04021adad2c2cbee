package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
)

// TestValidateAfterUp drives lucidctl as the README does, from a project
// holding the repository's own lucid.yaml: `up -d`, then `validate phase2`
// exits 0, then `down`; once with static discovery (--consul off), where
// the Consul check is skipped, and once with a real Consul, where it
// passes.
func TestValidateAfterUp(t *testing.T) {
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	lucidYAML, err := os.ReadFile(filepath.Join(repo, "lucid.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		offset     int
		consul     func(t *testing.T) string // the --consul flag
		consulLine string                    // the Consul check's status
	}{
		// Offsets whose ports (8079-8502 plus the offset) stay below the
		// kernel's ephemeral range (32768 up), where another test's
		// outgoing connection may hold one, and clear of the other
		// packages' stacks.
		{"static discovery", 15000, func(*testing.T) string { return "off" }, "skipped"},
		{"consul", 19000, func(t *testing.T) string { return testenv.Tool(t, "consul", "LUCID_CONSUL_BIN") }, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			consul := tt.consul(t)
			p := &stackProject{dir: t.TempDir(), offset: tt.offset}
			if err := os.WriteFile(filepath.Join(p.dir, "lucid.yaml"), lucidYAML, 0o600); err != nil {
				t.Fatal(err)
			}
			// A short block interval only makes the anchor check quicker.
			p.env = append(os.Environ(), "LUCID_BLOCK_INTERVAL=1s", "NO_COLOR=1")

			// up -d returns once every service is ready.
			up, upErr, code := p.lucidctl(t, "up", "-d", "--lucid", lucidBin, "--consul", consul, p.offsetFlag())
			t.Cleanup(func() {
				if out, errOut, code := p.lucidctl(t, "down"); code != 0 {
					t.Errorf("down: exit %d\n%s\n%s", code, out, errOut)
				}
			})
			if code != 0 {
				logs, _, _ := p.lucidctl(t, "logs", "--tail", "20")
				t.Fatalf("up -d: exit %d\n%s\n%s\nlast log lines:\n%s", code, up, upErr, logs)
			}

			out, errOut, code := p.lucidctl(t, "validate", "phase2", p.offsetFlag(), "--source", repo)
			if code != 0 {
				logs, _, _ := p.lucidctl(t, "logs", "--tail", "20")
				t.Logf("last log lines:\n%s", logs)
			}
			t.Logf("validate phase2:\n%s", out)
			if code != 0 {
				t.Fatalf("validate phase2: exit %d\n%s\n%s", code, out, errOut)
			}
			if strings.Contains(out, "FAIL") {
				t.Errorf("exit 0 with a failed check:\n%s", out)
			}

			out, errOut, code = p.lucidctl(t, "validate", "phase2", p.offsetFlag(), "--source", repo, "--json")
			var res struct {
				Passed bool
				Checks []struct{ Name, Status, Detail string }
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || !res.Passed {
				t.Fatalf("validate phase2 --json: exit %d, %v\n%s\n%s", code, err, out, errOut)
			}
			for _, c := range res.Checks {
				want := "ok"
				if strings.HasPrefix(c.Name, "consul") {
					want = tt.consulLine
				}
				if c.Status != want {
					t.Errorf("%s: %s (%s), want %s", c.Name, c.Status, c.Detail, want)
				}
			}
		})
	}
}
