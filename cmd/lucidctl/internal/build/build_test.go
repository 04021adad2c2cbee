package build

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

func TestBuildToOCILayout(t *testing.T) {
	io, _, out, errOut := iostreams.Test()
	env := cli.NewEnv(io, func(k string) string { return map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}[k] })
	env.JSON = true
	dir := t.TempDir()
	env.ConfigPath = filepath.Join(dir, "lucid.yaml")
	writeFile(t, env.ConfigPath, "images:\n  name: example.invalid/lucid-{service}\n  tag: t1\n")
	opts := &Options{Env: env, Image: ImageFlags{Platforms: []string{"linux/amd64"}, Base: "scratch", SourceDir: "../../../.."}, Builder: builderOCI, OCIDir: filepath.Join(dir, "oci")}
	if err := run(context.Background(), opts); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var o Output
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatalf("--json: %v: %q", err, out.String())
	}
	if len(o.Images) != 6 || !strings.HasPrefix(o.Images[0].Image, "example.invalid/lucid-mesh:t1") || o.Images[0].Platform != "linux/amd64" {
		t.Errorf("images %+v", o.Images)
	}
	if !strings.Contains(errOut.String(), "compile  linux/amd64") {
		t.Errorf("no progress on stderr: %q", errOut.String())
	}
}

func TestBuildRefusesBadCombinations(t *testing.T) {
	for name, o := range map[string]Options{
		"unknown builder":       {Builder: "kaniko", Image: ImageFlags{Platforms: []string{"linux/arm64"}}},
		"tarball of two":        {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"linux/arm64", "linux/amd64"}}, Tarball: "x.tar"},
		"docker with two":       {Builder: builderDocker, Image: ImageFlags{Platforms: []string{"linux/arm64", "linux/amd64"}}},
		"docker with push":      {Builder: builderDocker, Image: ImageFlags{Platforms: []string{"linux/amd64"}}, Push: true},
		"not a platform":        {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"arm64"}}},
		"not a platform at all": {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"linux/"}}},
		"lucid for two":         {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"linux/arm64", "linux/amd64"}, Lucid: "lucid"}},
		"no such lucid":         {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"linux/arm64"}, Lucid: "no-such-lucid"}},
		"no such ca-certs":      {Builder: builderOCI, Image: ImageFlags{Platforms: []string{"linux/arm64"}, CACerts: "no-such-bundle.pem"}},
	} {
		io, _, _, _ := iostreams.Test()
		env := cli.NewEnv(io, func(string) string { return "" })
		env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
		writeFile(t, env.ConfigPath, "images:\n  tag: t\n")
		o.Env = env
		if err := run(context.Background(), &o); cli.ExitCode(context.Background(), err) != cli.ExitUsage {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
