package envfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s := NewSecret(48)
		if len(s) != 48 || strings.Trim(s, secretAlphabet) != "" {
			t.Fatalf("secret %q has a character outside the alphabet or a wrong length", s)
		}
		if seen[s] {
			t.Fatal("secret repeated")
		}
		seen[s] = true
	}
}

func TestAddMissingKeepsExisting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "configs", ".env.core")
	added, err := AddMissing(p, map[string]string{"JWT_SECRET_KEY": "first"})
	if err != nil || len(added) != 1 {
		t.Fatalf("AddMissing = %v, %v", added, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}

	// An operator's own lines and comments survive; set keys are kept.
	if err := os.WriteFile(p, []byte("# mine\nJWT_SECRET_KEY=first\nREDIS_URL=\"redis://localhost:6379\"\nEMPTY="), 0o600); err != nil {
		t.Fatal(err)
	}
	added, err = AddMissing(p, map[string]string{"JWT_SECRET_KEY": "second", "EMPTY": "filled", "NEW": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(added, ",") != "EMPTY,NEW" {
		t.Errorf("added = %v", added)
	}
	vars, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if vars["JWT_SECRET_KEY"] != "first" || vars["REDIS_URL"] != "redis://localhost:6379" || vars["EMPTY"] != "filled" || vars["NEW"] != "x" {
		t.Errorf("vars = %v", vars)
	}
	data, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(data), "# mine\n") {
		t.Errorf("comment lost: %q", data)
	}
}

func TestReadDoesNotExpandFromEnvironment(t *testing.T) {
	t.Setenv("LUCID_TEST_HOST_SECRET", "leaked")
	p := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(p, []byte("A=${LUCID_TEST_HOST_SECRET}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	vars, err := Read(p)
	if err != nil {
		t.Fatal(err)
	}
	if vars["A"] == "leaked" {
		t.Error("env file value expanded from the process environment")
	}
}

func TestParseErrorsDoNotLeakValues(t *testing.T) {
	p := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(p, []byte("A=1\nJWT_SECRET_KEY=\"TOPSECRETVALUE\nB=2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Read(p)
	if err == nil {
		t.Fatal("want a syntax error")
	}
	if strings.Contains(err.Error(), "TOPSECRET") {
		t.Errorf("the error shows the value: %v", err)
	}
	if !strings.Contains(err.Error(), "line 2") {
		t.Errorf("the error does not name the line: %v", err)
	}
}
