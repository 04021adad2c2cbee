package stackcheck

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

// `validate phase2` against a real gateway serving HTTPS with a private
// CA's certificate: with --cacert the gateway's checks run over HTTPS
// (a request without a token gets 401, the free tier's limit 429); without
// it the certificate is refused, as it should be.
func TestPhase2AgainstAnHTTPSGateway(t *testing.T) {
	gw := testenv.StartGatewayTLS(t)
	run := func(args ...string) map[string]CheckResult {
		t.Helper()
		io, _, out, _ := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.ConfigPath, env.JSON = filepath.Join(t.TempDir(), "lucid.yaml"), true
		cmd := NewCmd(env)
		cmd.SetArgs(append([]string{"--target", gw.URL, "--env-file", gw.EnvFile, "--source", t.TempDir()}, args...))
		cmd.SetContext(context.Background())
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		_ = cmd.Execute() // exit 3: the checks that need the internal ports fail here
		var res Result
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("--json: %v\n%s", err, out.String())
		}
		byName := map[string]CheckResult{}
		for _, c := range res.Checks {
			byName[c.Name] = c
		}
		return byName
	}
	checks := run("--cacert", gw.CAFile)
	for _, name := range []string{"no token refused (401)", "free tier limited (429)"} {
		if c := checks[name]; c.Status != StatusOK {
			t.Errorf("with --cacert, %s: %+v", name, c)
		}
	}
	if c := checks["no token refused (401)"]; c.Status == StatusOK {
		t.Logf("over HTTPS: %s", c.Detail)
	}
	checks = run()
	if c := checks["no token refused (401)"]; c.Status != StatusFailed || !strings.Contains(c.Detail, "certificate") {
		t.Errorf("without --cacert the private CA's certificate was not refused: %+v", c)
	}
}
