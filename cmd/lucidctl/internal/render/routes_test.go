package render_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/routetable"
)

// lucidctl runs the CLI as a user would, in the project of config.
func lucidctl(t *testing.T, config string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	code = root.Execute(context.Background(), append([]string{"--config", config}, args...), io, func(string) string { return "" })
	return code, out.String(), errOut.String()
}

// TestRenderRoutesStartsTheTable: the README's way to start a route
// table works in a fresh checkout, where configs/gateway does not exist,
// and never overwrites an edited table by accident.
func TestRenderRoutesStartsTheTable(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "lucid.yaml")
	if err := os.WriteFile(config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := lucidctl(t, config, "render", "routes")
	if code != 0 || !strings.Contains(out, "created   "+deployfiles.RoutesPath) {
		t.Fatalf("render routes: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	path := filepath.Join(dir, filepath.FromSlash(deployfiles.RoutesPath))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := routetable.Parse(path, data)
	if err != nil || !slices.EqualFunc(routes, routetable.Default(), func(a, b routetable.Route) bool {
		return a.Prefix == b.Prefix && a.Service == b.Service && a.Timeout == b.Timeout
	}) {
		t.Fatalf("the written table is not the default one: %v\n%s", err, data)
	}

	// An edited table is kept unless --force.
	edited := slices.Concat(data, []byte("  - prefix: /mine\n    service: engine\n"))
	if err := os.WriteFile(path, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = lucidctl(t, config, "render", "routes")
	if code != cli.ExitFailure || !strings.Contains(errOut, "exists") || !strings.Contains(errOut, "--force") {
		t.Errorf("render routes over an edited table: exit %d, stderr %q", code, errOut)
	}
	if now, _ := os.ReadFile(path); string(now) != string(edited) {
		t.Error("the edited table was changed")
	}
	if code, out, _ = lucidctl(t, config, "render", "routes", "--force"); code != 0 || !strings.Contains(out, "updated") {
		t.Errorf("render routes --force: exit %d, stdout %q", code, out)
	}
	if code, _, errOut = lucidctl(t, config, "render", "routes", "extra"); code != cli.ExitUsage {
		t.Errorf("render routes extra: exit %d, stderr %q", code, errOut)
	}

	// render then mounts it.
	code, _, errOut = lucidctl(t, config, "render")
	if code != 0 || !strings.Contains(errOut, "the gateway's route table is "+deployfiles.RoutesPath) {
		t.Errorf("render after render routes: exit %d, stderr %q", code, errOut)
	}
}
