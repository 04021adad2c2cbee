package release

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
)

// TestGoReleaserConfig runs `goreleaser check` on the repository's
// configuration: valid, and using nothing deprecated.
func TestGoReleaserConfig(t *testing.T) {
	bin := testenv.Tool(t, "goreleaser", "LUCID_GORELEASER_BIN")
	cmd := exec.Command(bin, "check", "--config", ".goreleaser.yaml")
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("goreleaser check: %v\n%s", err, out)
	}
	if strings.Contains(strings.ToLower(string(out)), "deprecated") {
		t.Errorf("the configuration uses deprecated properties:\n%s", out)
	}
}
