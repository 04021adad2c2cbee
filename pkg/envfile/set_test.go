package envfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSetKeepsEveryOtherLine: Set replaces the lines of the keys it
// changes, appends the missing, keeps comments and other values byte for
// byte, and writes mode 0600.
func TestSetKeepsEveryOtherLine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "env", ".env.core")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	old := "# mine\nREDIS_URL=redis://r:6379/0\nJWT_SECRET_KEY=old\nexport ENCRYPTION_KEY = same\n"
	if err := os.WriteFile(p, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	changed, err := Set(p, map[string]string{"JWT_SECRET_KEY": "new", "ENCRYPTION_KEY": "same", "LUCID_MESH_TOKEN": "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []string{"JWT_SECRET_KEY", "LUCID_MESH_TOKEN"}) {
		t.Errorf("changed %v", changed)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := "# mine\nREDIS_URL=redis://r:6379/0\nJWT_SECRET_KEY=new\nexport ENCRYPTION_KEY = same\nLUCID_MESH_TOKEN=tok\n"
	if string(data) != want {
		t.Errorf("file:\n%s\nwant:\n%s", data, want)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != Mode {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if changed, err := Set(p, map[string]string{"JWT_SECRET_KEY": "new"}); err != nil || changed != nil {
		t.Errorf("nothing to change: %v, %v", changed, err)
	}
}

// TestSetRefusesWhatItCannotKeep: a value quoted over several lines that
// a replacement would break leaves the file as it was.
func TestSetRefusesWhatItCannotKeep(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".env")
	old := "CERT=\"line1\nJWT_SECRET_KEY=inside\"\nJWT_SECRET_KEY=old\n"
	if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Set(p, map[string]string{"JWT_SECRET_KEY": "n3wsecret"})
	if err == nil || strings.Contains(err.Error(), "n3wsecret") || strings.Contains(err.Error(), "inside") {
		t.Fatalf("error %v", err)
	}
	if data, _ := os.ReadFile(p); string(data) != old {
		t.Errorf("the file changed: %q", data)
	}
}
