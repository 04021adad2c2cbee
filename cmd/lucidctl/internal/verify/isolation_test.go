package verify

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
)

const isolationFixture = "../../../../testdata/isolation/tree"

func runScan(t *testing.T, o IsolationOptions) (string, int) {
	t.Helper()
	io, _, out, _ := iostreams.Test()
	env := cli.NewEnv(io, func(string) string { return "" })
	env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml") // none: the defaults
	o.Env = env
	err := runIsolation(context.Background(), &o)
	return out.String(), cli.ExitCode(context.Background(), err)
}

func TestIsolationExitCodes(t *testing.T) {
	out, code := runScan(t, IsolationOptions{Root: isolationFixture, Format: "json"})
	if code != cli.ExitProblems {
		t.Fatalf("fixture: exit %d, want 3", code)
	}
	var rep struct {
		Violations []struct{ Rule string } `json:"violations"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Violations) == 0 {
		t.Fatalf("--format json: %v %q", err, out)
	}

	// Clean: the payment tree alone has no core path in it.
	out, code = runScan(t, IsolationOptions{Root: isolationFixture + "/payment-systems/..", Format: "text", Policy: writePolicy(t, "core_paths: [payment-systems/tron/api/]\nforbidden_terms: [usdt]\n")})
	if code != 0 || !strings.Contains(out, "0 violations") {
		t.Fatalf("clean tree: exit %d\n%s", code, out)
	}

	if _, code = runScan(t, IsolationOptions{Root: filepath.Join(t.TempDir(), "missing"), Format: "text"}); code != cli.ExitUsage {
		t.Errorf("a missing root: exit %d, want 2", code)
	}
	if _, code = runScan(t, IsolationOptions{Root: isolationFixture, Format: "xml"}); code != cli.ExitUsage {
		t.Errorf("--format xml: exit %d, want 2", code)
	}
	if _, code = runScan(t, IsolationOptions{Root: isolationFixture, Format: "text", Policy: writePolicy(t, "core_pathz: [x]\n")}); code != cli.ExitUsage {
		t.Errorf("a policy with a typo: exit %d, want 2", code)
	}
	out, _ = runScan(t, IsolationOptions{Root: isolationFixture, Format: "text"})
	if !strings.Contains(out, "var [TRON]_API_KEY") {
		t.Errorf("text output does not mark the match:\n%s", out)
	}
}

func writePolicy(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
