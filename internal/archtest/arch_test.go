package archtest

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/pickme/lucid"

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Deps       []string
	Imports    []string
}

// listPackages runs `go list -deps -json` over the whole module and returns
// the module's own packages.
func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func within(path, dir string) bool {
	p := module + "/" + dir
	return path == p || strings.HasPrefix(path, p+"/")
}

// TestImportRules enforces DESIGN.md's dependency direction:
// cmd/lucidctl → pkg; cmd/lucid → services → pkg; pkg never reaches cmd or
// services; a service never imports another service.
func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, dep := range p.Deps {
			if !strings.HasPrefix(dep, module+"/") {
				continue
			}
			switch {
			case within(p.ImportPath, "pkg") && (within(dep, "cmd") || within(dep, "services")):
				t.Errorf("%s depends on %s: pkg/ must not reach cmd/ or services/", p.ImportPath, dep)
			case within(p.ImportPath, "cmd/lucidctl") && within(dep, "services"):
				t.Errorf("%s depends on %s: lucidctl must not import services", p.ImportPath, dep)
			case within(p.ImportPath, "services") && within(dep, "cmd"):
				t.Errorf("%s depends on %s: services must not import cmd/", p.ImportPath, dep)
			case within(p.ImportPath, "services") && within(dep, "services") && service(p.ImportPath) != service(dep):
				t.Errorf("%s depends on %s: services talk over HTTP, not imports", p.ImportPath, dep)
			case !strings.HasSuffix(p.ImportPath, "_test") && within(dep, "internal/testenv") && !within(p.ImportPath, "internal"):
				t.Errorf("%s depends on %s outside its tests", p.ImportPath, dep)
			}
		}
	}
}

// service returns the service a package under services/ belongs to.
func service(path string) string {
	rest := strings.TrimPrefix(path, module+"/services/")
	name, _, _ := strings.Cut(rest, "/")
	return name
}

// TestPackageDocs requires a package doc comment everywhere, and forbids
// grab-bag package names.
func TestPackageDocs(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
		switch p.Name {
		case "util", "utils", "common", "helpers", "misc":
			t.Errorf("%s: package name %q says nothing about what it holds", p.ImportPath, p.Name)
		}
	}
}

// TestLibrariesDoNotPrint keeps pkg/ free of direct writes to the process's
// streams and of exits: libraries return errors and take writers.
func TestLibrariesDoNotPrint(t *testing.T) {
	for _, p := range listPackages(t) {
		if !within(p.ImportPath, "pkg") {
			continue
		}
		// Every non-test file, whatever platform it builds for.
		dir := strings.TrimPrefix(p.ImportPath, module+"/")
		files, err := filepath.Glob("../../" + dir + "/*.go")
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") {
				continue
			}
			f := filepath.Base(path)
			src, err := readFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, bad := range []string{"os.Exit(", "fmt.Print", "os.Stdout", "os.Stderr", "log.Fatal", "log.Print"} {
				if strings.Contains(src, bad) {
					t.Errorf("%s/%s uses %s: libraries never print or exit", dir, f, bad)
				}
			}
		}
	}
}
