package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
)

func TestOperatorEnv(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	environ := map[string]string{"LUCID_MESH_TOKEN": "from-env"}
	e := NewEnv(io, func(k string) string { return environ[k] })
	file := filepath.Join(t.TempDir(), ".env.core")
	if err := os.WriteFile(file, []byte("LUCID_MESH_TOKEN=from-file\nLUCID_OPERATOR_TOKEN=op\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vals, err := e.OperatorEnv(file)
	if err != nil {
		t.Fatal(err)
	}
	if v, src := vals.Value("LUCID_MESH_TOKEN"); v != "from-env" || src != "the environment" {
		t.Errorf("the environment must win: %q from %q", v, src)
	}
	if v, src := vals.Value("LUCID_OPERATOR_TOKEN"); v != "op" || src != file {
		t.Errorf("from the file: %q from %q", v, src)
	}
	if v, _ := vals.Value("JWT_SECRET_KEY"); v != "" {
		t.Errorf("a key in neither: %q", v)
	}
	missing, err := e.OperatorEnv(filepath.Join(t.TempDir(), "none"))
	if err != nil {
		t.Fatalf("a missing file: %v", err)
	}
	if v, _ := missing.Value("LUCID_OPERATOR_TOKEN"); v != "" {
		t.Errorf("a missing file has values: %q", v)
	}
}
