package isolation

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Rules.
const (
	RuleTerm          = "term"
	RuleCoreTerm      = "core-term"
	RuleImport        = "import"
	RuleMissingDir    = "missing-isolated-dir"
	RuleMentionsCore  = "isolated-dir-mentions-core"
	maxFileBytes      = 32 << 20 // larger files are data, not code
	binarySniffLength = 8000
)

// Finding is one violation or warning.
type Finding struct {
	Path    string `json:"path"` // relative to the scanned root, slash-separated
	Line    int    `json:"line"`
	Column  int    `json:"column"`
	Rule    string `json:"rule"`
	Match   string `json:"match"`
	Message string `json:"message"`
	// Text is the line the match is on, for human output.
	Text string `json:"-"`
}

// Report is a scan's answer.
type Report struct {
	Violations   []Finding `json:"violations"`
	Warnings     []Finding `json:"warnings"`
	FilesScanned int       `json:"files_scanned"`
}

// Scan scans the tree at root under policy p (merged with the defaults).
// The error is for a scan that could not run (root unreadable).
func Scan(ctx context.Context, root string, p Policy) (*Report, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	p = p.Merge(root)
	s := &scanner{root: root, p: p, terms: set(p.ForbiddenTerms), warnTerms: set(p.IsolatedWarnTerms), mods: p.ForbiddenModules}
	for _, m := range p.ForbiddenModules {
		s.modsLower = append(s.modsLower, strings.ToLower(m))
	}
	s.scoped = map[string][]string{}
	for _, st := range p.ScopedTerms {
		s.scoped[strings.ToLower(st.Term)] = st.Paths
	}
	s.scopedTerms = map[string]bool{}
	for t := range s.scoped {
		s.scopedTerms[t] = true
	}
	rep := &Report{Violations: []Finding{}, Warnings: []Finding{}}
	for _, d := range p.IsolatedDirs {
		if st, err := os.Stat(filepath.Join(root, filepath.FromSlash(d))); err != nil || !st.IsDir() {
			rep.Violations = append(rep.Violations, Finding{Path: d, Rule: RuleMissingDir, Match: d,
				Message: "the isolated payment tree " + d + " does not exist"})
		}
	}

	files := make(chan string, 256)
	var walkErr error
	go func() {
		defer close(files)
		walkErr = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if d.IsDir() {
				if p != root && slices.Contains(s.p.SkipDirs, d.Name()) {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			for _, g := range s.p.SkipGlobs {
				if ok, _ := path.Match(g, d.Name()); ok {
					return nil
				}
			}
			files <- p
			return nil
		})
	}()

	var wg sync.WaitGroup
	results := make([]fileResult, runtime.GOMAXPROCS(0)*2)
	for w := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range files {
				s.scanFile(f, &results[w])
			}
		}()
	}
	wg.Wait()
	if walkErr != nil {
		return nil, walkErr
	}
	var goFiles []goFile
	for _, r := range results {
		rep.FilesScanned += r.scanned
		rep.Violations = append(rep.Violations, r.violations...)
		rep.Warnings = append(rep.Warnings, r.warnings...)
		goFiles = append(goFiles, r.goFiles...)
	}
	rep.Violations = append(rep.Violations, s.goImports(goFiles)...)
	sortFindings(rep.Violations)
	sortFindings(rep.Warnings)
	return rep, nil
}

func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		switch {
		case a.Path != b.Path:
			return a.Path < b.Path
		case a.Line != b.Line:
			return a.Line < b.Line
		case a.Column != b.Column:
			return a.Column < b.Column
		case a.Rule != b.Rule:
			return a.Rule < b.Rule
		case a.Match != b.Match:
			return a.Match < b.Match
		}
		return a.Message < b.Message
	})
}

func set(words []string) map[string]bool {
	m := map[string]bool{}
	for _, w := range words {
		m[strings.ToLower(w)] = true
	}
	return m
}

type scanner struct {
	root        string
	p           Policy
	terms       map[string]bool
	warnTerms   map[string]bool
	scoped      map[string][]string
	scopedTerms map[string]bool
	mods        []string
	modsLower   []string // mods in lower case, for forbiddenModule
}

// fileResult is one worker's findings.
type fileResult struct {
	scanned    int
	violations []Finding
	warnings   []Finding
	goFiles    []goFile
}

func (s *scanner) scanFile(file string, r *fileResult) {
	rel, err := filepath.Rel(s.root, file)
	if err != nil {
		return
	}
	rel = filepath.ToSlash(rel)
	core := under(rel, s.p.CorePaths)
	isolated := under(rel, s.p.IsolatedDirs)
	isGo := strings.HasSuffix(rel, ".go")
	if !core && !isolated && !isGo {
		return // nothing to check outside; Go files feed the import graph
	}
	info, err := os.Stat(file)
	if err != nil || info.Size() > maxFileBytes {
		return
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return
	}
	if bytes.IndexByte(data[:min(len(data), binarySniffLength)], 0) >= 0 {
		return // binary
	}
	if isGo {
		r.goFiles = append(r.goFiles, parseGoImports(rel, data))
	}
	if !core && !isolated {
		return
	}
	r.scanned++
	lines := strings.Split(string(data), "\n")
	for i, line := range lines {
		if s.p.ExemptMarker != "" && strings.Contains(line, s.p.ExemptMarker) {
			continue
		}
		line = strings.TrimSuffix(line, "\r")
		if core {
			for _, m := range findTerms(line, s.terms) {
				r.violations = append(r.violations, Finding{Path: rel, Line: i + 1, Column: m.col + 1, Rule: RuleTerm, Match: m.text, Text: line,
					Message: fmt.Sprintf("%q names the payment system (term %q) in core code", m.text, m.term)})
			}
			for _, m := range findTerms(line, s.scopedTerms) {
				if under(rel, s.scoped[m.term]) {
					r.violations = append(r.violations, Finding{Path: rel, Line: i + 1, Column: m.col + 1, Rule: RuleCoreTerm, Match: m.text, Text: line,
						Message: fmt.Sprintf("%q is not allowed under %s", m.text, strings.Join(s.scoped[m.term], ", "))})
				}
			}
		}
		if isolated {
			for _, m := range findTerms(line, s.warnTerms) {
				r.warnings = append(r.warnings, Finding{Path: rel, Line: i + 1, Column: m.col + 1, Rule: RuleMentionsCore, Match: m.text, Text: line,
					Message: fmt.Sprintf("the payment tree mentions %q: it should not depend on the core", m.text)})
			}
		}
	}
	if core {
		switch ext := path.Ext(rel); ext {
		case ".py":
			r.violations = append(r.violations, s.scriptImports(rel, lines, pythonImports)...)
		case ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".mts", ".cts":
			r.violations = append(r.violations, s.scriptImports(rel, lines, jsImports)...)
		}
	}
}

// forbiddenModule reports whether an import path names a forbidden module
// (itself or a subpackage).
func (s *scanner) forbiddenModule(imp string) (string, bool) {
	// Runs for every step of the import graph's searches: one lower-casing
	// of imp, none of the modules.
	low := strings.ToLower(imp)
	for i, m := range s.modsLower {
		if rest, ok := strings.CutPrefix(low, m); ok && (rest == "" || rest[0] == '/' || rest[0] == '.') {
			return s.mods[i], true
		}
	}
	return "", false
}
