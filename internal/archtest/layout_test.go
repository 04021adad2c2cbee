package archtest

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestProjectLayoutIsComplete keeps docs/project-layout.md true: every
// package of the module is named in its tree, and every folder the tree
// names exists. A package added without a line there, or one moved or
// deleted while the page still names it, fails here.
func TestProjectLayoutIsComplete(t *testing.T) {
	doc, err := os.ReadFile("../../docs/project-layout.md")
	if err != nil {
		t.Fatal(err)
	}
	listed, patterns := layoutTree(t, string(doc))
	for _, p := range listPackages(t) {
		dir := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		if !slices.Contains(listed, dir) && !slices.ContainsFunc(patterns, func(re *regexp.Regexp) bool { return re.MatchString(dir) }) {
			t.Errorf("package %s is missing from docs/project-layout.md: add a line saying what it holds", dir)
		}
	}
	for _, l := range listed {
		if _, err := os.Stat("../../" + l); err != nil {
			t.Errorf("docs/project-layout.md names %s/, which does not exist", l)
		}
	}
}

// layoutTree reads the first code block of the page: a line's leading
// folders ("name/", several on a line when they share a description) are
// relative to the last unindented folder above it. A folder with <name> in
// it stands for each folder there.
func layoutTree(t *testing.T, doc string) (listed []string, patterns []*regexp.Regexp) {
	t.Helper()
	_, block, ok := strings.Cut(doc, "```\n")
	if !ok {
		t.Fatal("docs/project-layout.md has no code block")
	}
	block, _, _ = strings.Cut(block, "```")
	parent := ""
	for line := range strings.Lines(block) {
		indented := strings.HasPrefix(line, " ")
		for _, f := range strings.Fields(line) {
			if !strings.HasSuffix(f, "/") {
				break // the description starts
			}
			path := strings.TrimSuffix(f, "/")
			if indented {
				path = parent + "/" + path
			} else {
				parent = path
			}
			if strings.Contains(path, "<") {
				patterns = append(patterns, regexp.MustCompile("^"+regexp.MustCompile(`<[a-z]+>`).ReplaceAllString(regexp.QuoteMeta(path), "[^/]+")+"$"))
				continue
			}
			listed = append(listed, path)
		}
	}
	if len(listed) < 10 {
		t.Fatalf("read only %d folders from docs/project-layout.md's tree", len(listed))
	}
	return listed, patterns
}
