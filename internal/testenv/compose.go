package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// ComposeV1 returns the path of docker-compose v1 (Python), which reads env
// files with python-dotenv instead of compose-go: tests of what Lucid writes
// need both readers. A docker-compose that is missing, or is v2 under the old
// name, skips t (fails it in CI). LUCID_DOCKER_COMPOSE_BIN names another one.
func ComposeV1(t testing.TB) string {
	t.Helper()
	bin := Tool(t, "docker-compose", "LUCID_DOCKER_COMPOSE_BIN")
	out, err := exec.Command(bin, "version", "--short").Output()
	if err != nil {
		Missing(t, "docker-compose v1 ("+bin+" version --short: "+err.Error()+")")
	}
	if v := strings.TrimSpace(string(out)); !strings.HasPrefix(v, "1.") {
		Missing(t, "docker-compose v1 ("+bin+" is version "+v+")")
	}
	return bin
}
