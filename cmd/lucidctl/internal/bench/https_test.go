package bench

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/internal/testenv"
)

// `lucidctl bench --cacert` drives load at a real gateway serving HTTPS
// with a private CA's certificate; without --cacert every request fails
// on the certificate.
func TestBenchAgainstAnHTTPSGateway(t *testing.T) {
	gw := testenv.StartGatewayTLS(t)
	run := func(args ...string) ScenarioResult {
		t.Helper()
		io, _, out, _ := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.ConfigPath, env.JSON = filepath.Join(t.TempDir(), "lucid.yaml"), true
		cmd := NewCmd(env)
		cmd.SetArgs(append([]string{"--target", gw.URL, "--env-file", gw.EnvFile, "--scenarios", "gateway-throughput", "--duration", "1s", "--concurrency", "4"}, args...))
		cmd.SetContext(context.Background())
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		_ = cmd.Execute() // the Phase 2 target may be missed on a loaded machine
		var res Result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res.Scenarios) != 1 {
			t.Fatalf("--json: %v\n%s", err, out.String())
		}
		return res.Scenarios[0]
	}
	s := run("--cacert", gw.CAFile)
	if s.Metrics["requests"] == 0 || s.Metrics["errors"] != 0 {
		t.Errorf("with --cacert: %+v", s)
	}
	t.Logf("over HTTPS: %.0f requests/s", s.Metrics["requests_per_second"])
	s = run()
	if s.Metrics["requests"] != 0 && s.Metrics["errors"] != s.Metrics["requests"] || !strings.Contains(s.FirstErrors["requests"]+s.Error, "certificate") {
		t.Errorf("without --cacert: %+v", s)
	}
}
