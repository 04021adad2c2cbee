package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestTestsDoNotSleep: no test waits by sleeping. A sleep stands in for
// "long enough", which is too long on an idle machine and too short on a
// busy one. Tests wait for the event itself (a channel, a readiness probe,
// a polled condition with a deadline). In a testing/synctest bubble the
// fake clock is moved by waiting on a ticker, so even there a sleep is not
// needed.
//
// Caught: time.Sleep(d), and <-time.After(d) as a statement of its own.
func TestTestsDoNotSleep(t *testing.T) {
	root := filepath.Join("..", "..")
	var files int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		for _, s := range sleepsIn(t, path) {
			t.Errorf("%s:%d: %s: wait for the event (in a synctest bubble, on a ticker)", filepath.ToSlash(rel), s.line, s.what)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("found only %d test files under the module", files)
	}
}

type sleep struct {
	line int
	what string
}

// sleepsIn parses one test file and returns its sleeps.
func sleepsIn(t *testing.T, path string) []sleep {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	timePkg := importName(f, "time")
	if timePkg == "" {
		return nil
	}
	var found []sleep
	var walk func(n ast.Node)
	walk = func(n ast.Node) {
		ast.Inspect(n, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CommClause:
				// A select's time.After case bounds a wait for an
				// event; it is a timeout, not a sleep.
				for _, st := range n.Body {
					walk(st)
				}
				return false
			case *ast.CallExpr:
				if isCall(n, timePkg, "Sleep") {
					found = append(found, sleep{fset.Position(n.Pos()).Line, timePkg + ".Sleep"})
				}
			case *ast.ExprStmt:
				if u, ok := n.X.(*ast.UnaryExpr); ok && u.Op == token.ARROW {
					if c, ok := u.X.(*ast.CallExpr); ok && isCall(c, timePkg, "After") {
						found = append(found, sleep{fset.Position(n.Pos()).Line, "<-" + timePkg + ".After"})
					}
				}
			}
			return true
		})
	}
	walk(f)
	return found
}

// importName is the name under which f imports path, or "" if it does not
// (a dot or blank import counts as not).
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil || p != path {
			continue
		}
		if imp.Name == nil {
			return path[strings.LastIndex(path, "/")+1:]
		}
		if imp.Name.Name == "." || imp.Name.Name == "_" {
			return ""
		}
		return imp.Name.Name
	}
	return ""
}

// isCall reports whether c calls pkg.name.
func isCall(c *ast.CallExpr, pkg, name string) bool {
	sel, ok := c.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != name {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg
}

// TestSleepsInFindsThem: the guard itself finds a sleep, a bare
// <-time.After under another import name, and leaves a select's timeout.
func TestSleepsInFindsThem(t *testing.T) {
	src := `package x

import (
	"testing"
	tm "time"
)

func TestX(t *testing.T) {
	tm.Sleep(tm.Second)
	<-tm.After(tm.Second)
	select {
	case <-tm.After(tm.Second):
	}
}
`
	path := filepath.Join(t.TempDir(), "x_test.go")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	got := sleepsIn(t, path)
	if len(got) != 2 || got[0].what != "tm.Sleep" || got[0].line != 9 || got[1].what != "<-tm.After" || got[1].line != 10 {
		t.Errorf("found %+v; want tm.Sleep on line 9 and <-tm.After on line 10, and not the select", got)
	}
}
