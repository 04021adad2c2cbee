package isolation

import (
	"fmt"
	"go/parser"
	"go/token"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// moduleRef is a module a line of script imports, and where.
type moduleRef struct {
	module string
	col    int
	// below are modules the import names under module (a relative Python
	// `from .. import x` names ..x), checked when module itself is not
	// isolated.
	below []string
}

var (
	pyImport     = regexp.MustCompile(`^\s*import\s+(.+)$`)
	pyFrom       = regexp.MustCompile(`^\s*from\s+(\.*[\w.]*)\s+import\b`)
	pyDynamic    = regexp.MustCompile(`(?:__import__|import_module)\(\s*['"]([\w.]+)['"]`)
	jsFrom       = regexp.MustCompile(`\bfrom\s*['"]([^'"]+)['"]`)
	jsBare       = regexp.MustCompile(`^\s*import\s*['"]([^'"]+)['"]`)
	jsCall       = regexp.MustCompile("\\b(?:require|import)\\s*\\(\\s*['\"`]([^'\"`]+)['\"`]\\s*\\)")
	pyImportItem = regexp.MustCompile(`^\s*([\w.]+)`)
)

// pythonImports finds `import a, b as c`, `from x.y import z as w`
// (relative ones keep their leading dots), statements after a `;`, and
// __import__/import_module("x").
func pythonImports(line string) []moduleRef {
	var out []moduleRef
	base := 0
	for _, stmt := range strings.Split(line, ";") {
		if m := pyFrom.FindStringSubmatchIndex(stmt); m != nil {
			ref := moduleRef{module: stmt[m[2]:m[3]], col: base + m[2]}
			// A relative import may name the isolated package only after
			// `import` (from ..payment_systems import tron).
			if strings.HasPrefix(ref.module, ".") {
				sep := "."
				if strings.HasSuffix(ref.module, ".") {
					sep = ""
				}
				for _, item := range strings.Split(strings.Trim(stmt[m[1]:], " ()"), ",") {
					if im := pyImportItem.FindStringSubmatch(item); im != nil {
						ref.below = append(ref.below, ref.module+sep+im[1])
					}
				}
			}
			out = append(out, ref)
		} else if m := pyImport.FindStringSubmatchIndex(stmt); m != nil {
			list := stmt[m[2]:m[3]]
			off := base + m[2]
			for _, item := range strings.Split(list, ",") {
				if im := pyImportItem.FindStringSubmatchIndex(item); im != nil {
					out = append(out, moduleRef{module: item[im[2]:im[3]], col: off + im[2]})
				}
				off += len(item) + 1
			}
		}
		base += len(stmt) + 1
	}
	for _, m := range pyDynamic.FindAllStringSubmatchIndex(line, -1) {
		out = append(out, moduleRef{module: line[m[2]:m[3]], col: m[2]})
	}
	return out
}

// jsImports finds `import x from 'm'`, `import {a as b} from "m"`,
// `import 'm'`, `require('m')` and dynamic `import('m')`.
func jsImports(line string) []moduleRef {
	var out []moduleRef
	for _, re := range []*regexp.Regexp{jsFrom, jsBare, jsCall} {
		for _, m := range re.FindAllStringSubmatchIndex(line, -1) {
			out = append(out, moduleRef{module: line[m[2]:m[3]], col: m[2]})
		}
	}
	return out
}

// scriptImports checks a core script's imports: forbidden packages, and
// anything inside an isolated dir (a relative path, or a Python dotted path
// that spells one).
func (s *scanner) scriptImports(rel string, lines []string, find func(string) []moduleRef) []Finding {
	var out []Finding
	for i, line := range lines {
		if s.p.ExemptMarker != "" && strings.Contains(line, s.p.ExemptMarker) {
			continue
		}
		for _, ref := range find(line) {
			msg := ""
			if m, bad := s.forbiddenModule(packageName(ref.module)); bad {
				msg = fmt.Sprintf("imports %s, a forbidden module (%s)", ref.module, m)
			} else {
				for _, mod := range append([]string{ref.module}, ref.below...) {
					if dir, bad := s.intoIsolated(rel, mod); bad {
						msg = fmt.Sprintf("imports %s, inside the isolated tree %s", mod, dir)
						break
					}
				}
			}
			if msg != "" {
				out = append(out, Finding{Path: rel, Line: i + 1, Column: ref.col + 1, Rule: RuleImport, Match: ref.module, Text: line, Message: msg})
			}
		}
	}
	return out
}

// packageName is the package a script import names: "@scope/pkg" or the
// first element of a path or a dotted module.
func packageName(module string) string {
	if strings.HasPrefix(module, "@") {
		parts := strings.SplitN(module, "/", 3)
		if len(parts) >= 2 {
			return parts[0] + "/" + parts[1]
		}
	}
	if parts := strings.FieldsFunc(module, func(r rune) bool { return r == '/' || r == '.' }); len(parts) > 0 {
		return parts[0]
	}
	return module
}

// intoIsolated reports whether a script import resolves inside an isolated
// dir: a relative path from the importing file, or a dotted Python path.
func (s *scanner) intoIsolated(rel, module string) (string, bool) {
	var target string
	switch {
	case strings.HasPrefix(module, "./") || strings.HasPrefix(module, "../"):
		target = path.Join(path.Dir(rel), module)
	case strings.HasPrefix(module, "/"):
		target = strings.TrimPrefix(module, "/")
	case strings.HasPrefix(module, "."):
		// A relative Python import: one dot is the file's package, each
		// more goes up one.
		dots := len(module) - len(strings.TrimLeft(module, "."))
		dir := path.Dir(rel)
		for range dots - 1 {
			dir = path.Dir(dir)
		}
		target = path.Join(dir, strings.ReplaceAll(module[dots:], ".", "/"))
	default:
		target = strings.ReplaceAll(module, ".", "/")
	}
	for _, d := range s.p.IsolatedDirs {
		for _, form := range []string{d, strings.ReplaceAll(d, "-", "_")} {
			if target+"/" == form || strings.HasPrefix(target+"/", form) {
				return d, true
			}
		}
	}
	return "", false
}

// goFile is one Go file's package directory and imports.
type goFile struct {
	rel     string // the file
	dir     string // its directory, slash-separated
	imports []goImport
}

type goImport struct {
	path      string
	line, col int
}

func parseGoImports(rel string, data []byte) goFile {
	gf := goFile{rel: rel, dir: path.Dir(rel)}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, data, parser.ImportsOnly)
	if err != nil {
		return gf
	}
	for _, is := range f.Imports {
		p, err := strconv.Unquote(is.Path.Value)
		if err != nil {
			continue
		}
		pos := fset.Position(is.Path.Pos())
		gf.imports = append(gf.imports, goImport{path: p, line: pos.Line, col: pos.Column})
	}
	return gf
}

// goImports follows the import graph from every Go file under a core path
// through the tree's own packages and reports each import that leads,
// directly or transitively, into an isolated dir or to a forbidden module,
// with the chain that gets there.
func (s *scanner) goImports(files []goFile) []Finding {
	// The tree's packages by import path (each directory under the
	// nearest go.mod: nested modules included), and their imports. Test
	// files' imports are not part of the package others import.
	mods := newModuleIndex(s.root)
	pkgImports := map[string][]string{}
	pkgDir := map[string]string{}
	for _, f := range files {
		ip := mods.importPath(f.dir)
		pkgDir[ip] = f.dir
		if strings.HasSuffix(f.rel, "_test.go") {
			continue
		}
		for _, im := range f.imports {
			if !slices.Contains(pkgImports[ip], im.path) {
				pkgImports[ip] = append(pkgImports[ip], im.path)
			}
		}
	}
	// bad finds, from an import path, a chain to a forbidden package: a
	// depth-first search in sorted order, so the answer does not depend on
	// map order. Found chains are memoised; so is "none" for every package
	// a search that found nothing went through, since all they reach was
	// searched too.
	for ip := range pkgImports {
		slices.Sort(pkgImports[ip])
	}
	memo := map[string][]string{}
	clean := map[string]bool{}
	var search func(ip string, visited map[string]bool) []string
	search = func(ip string, visited map[string]bool) []string {
		if c, ok := memo[ip]; ok {
			return c
		}
		if clean[ip] || visited[ip] {
			return nil
		}
		if _, ok := s.forbiddenModule(ip); ok {
			return []string{ip}
		}
		dir, local := pkgDir[ip]
		switch {
		case !local:
			return nil
		case under(dir+"/", s.p.IsolatedDirs):
			return []string{ip}
		}
		visited[ip] = true
		for _, next := range pkgImports[ip] {
			if c := search(next, visited); c != nil {
				chain := append([]string{ip}, c...)
				memo[ip] = chain
				return chain
			}
		}
		return nil
	}
	bad := func(ip string) []string {
		visited := map[string]bool{}
		chain := search(ip, visited)
		if chain == nil {
			for v := range visited {
				clean[v] = true
			}
		}
		return chain
	}
	var out []Finding
	for _, f := range files {
		if !under(f.rel, s.p.CorePaths) {
			continue
		}
		for _, im := range f.imports {
			chain := bad(im.path)
			if chain == nil {
				continue
			}
			end := chain[len(chain)-1]
			why := "a forbidden module"
			if d, ok := pkgDir[end]; ok && under(d+"/", s.p.IsolatedDirs) {
				why = "inside the isolated tree"
			}
			msg := fmt.Sprintf("imports %s, %s", im.path, why)
			if len(chain) > 1 {
				msg = fmt.Sprintf("imports %s, which reaches %s: %s", im.path, why, strings.Join(chain, " -> "))
			}
			out = append(out, Finding{Path: f.rel, Line: im.line, Column: im.col, Rule: RuleImport, Match: im.path, Message: msg})
		}
	}
	return out
}

// moduleIndex names directories by import path: each under the nearest
// go.mod above it; without one, by its path.
type moduleIndex struct {
	root  string
	cache map[string]string // dir -> module root dir ("" none) + "\x00" + module path
}

func newModuleIndex(root string) *moduleIndex {
	return &moduleIndex{root: root, cache: map[string]string{}}
}

func (m *moduleIndex) importPath(dir string) string {
	modDir, mod := m.module(dir)
	if mod == "" {
		return dir
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(dir, modDir), "/")
	if dir == modDir || rel == "" || rel == "." {
		return mod
	}
	return path.Join(mod, rel)
}

// module finds the go.mod governing dir (a slash path relative to root).
func (m *moduleIndex) module(dir string) (string, string) {
	if v, ok := m.cache[dir]; ok {
		d, mod, _ := strings.Cut(v, "\x00")
		return d, mod
	}
	d, mod := "", ""
	if p := modulePath(filepath.Join(m.root, filepath.FromSlash(dir))); p != "" {
		d, mod = dir, p
	} else if dir != "." && dir != "" {
		d, mod = m.module(path.Dir(dir))
	}
	m.cache[dir] = d + "\x00" + mod
	return d, mod
}
