// Package isolation is the TRON-isolation scan: it proves that the chain
// code (the core paths) neither names nor reaches the payment system, which
// lives in its own isolated tree.
//
// Unlike a substring grep it matches terms as tokens (identifiers are split
// on non-alphanumerics and camelCase, then compared case-insensitively), so
// TronWeb, TRON_API_KEY and amountTRX are found and strong, electronic and
// MATRIX are not; and it follows imports: Go packages transitively through
// the tree's own packages, Python and JavaScript/TypeScript imports however
// they are aliased.
package isolation

import (
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// Policy says what is core, what is forbidden there, and where the payment
// code is isolated. A nil list takes the default; an empty one means none.
type Policy struct {
	// CorePaths are directories (slash-separated, relative to the scanned
	// root) that must stay free of payment code.
	CorePaths []string `yaml:"core_paths" json:"core_paths"`
	// ForbiddenTerms may not appear in core paths, as tokens.
	ForbiddenTerms []string `yaml:"forbidden_terms" json:"forbidden_terms"`
	// ScopedTerms are forbidden only under some paths.
	ScopedTerms []ScopedTerm `yaml:"scoped_terms" json:"scoped_terms"`
	// IsolatedDirs are the payment trees; each must exist.
	IsolatedDirs []string `yaml:"isolated_dirs" json:"isolated_dirs"`
	// IsolatedWarnTerms inside an isolated dir give a warning: the payment
	// code talking about the core.
	IsolatedWarnTerms []string `yaml:"isolated_warn_terms" json:"isolated_warn_terms"`
	// ForbiddenModules are Go module paths (prefixes) and Python or
	// JavaScript package names core code may not import.
	ForbiddenModules []string `yaml:"forbidden_modules" json:"forbidden_modules"`
	// ExemptMarker on a line exempts it.
	ExemptMarker string `yaml:"exempt_marker" json:"exempt_marker"`
	// SkipDirs are directory names never entered; SkipGlobs file name
	// patterns never read.
	SkipDirs  []string `yaml:"skip_dirs" json:"skip_dirs"`
	SkipGlobs []string `yaml:"skip_globs" json:"skip_globs"`
}

// ScopedTerm is a term forbidden under some paths only.
type ScopedTerm struct {
	Term  string   `yaml:"term" json:"term"`
	Paths []string `yaml:"paths" json:"paths"`
}

// Default is the Phase 2 document's policy, made precise.
func Default() Policy {
	return Policy{
		CorePaths:         []string{"blockchain/"},
		ForbiddenTerms:    []string{"tron", "tronweb", "tronpy", "trx", "trc20", "usdt"},
		ScopedTerms:       []ScopedTerm{{Term: "payment", Paths: []string{"blockchain/core/"}}},
		IsolatedDirs:      []string{"payment-systems/tron/"},
		IsolatedWarnTerms: []string{"blockchain"},
		ForbiddenModules:  []string{"github.com/fbsobreira/gotron-sdk", "tronpy", "tronweb", "tronapi", "tron-api"},
		ExemptMarker:      "TRON_ISOLATION_VERIFIED",
		SkipDirs:          []string{"node_modules", ".git", "vendor", "third_party", ".venv", "venv", "__pycache__"},
		SkipGlobs:         []string{"*.log"},
	}
}

// Lucid's own chain code, core when the scanned tree is this project.
const lucidModule = "github.com/pickme/lucid"

var lucidCorePaths = []string{
	"services/engine/", "services/anchoring/", "services/blocks/", "services/datachain/",
	"pkg/chain/", "pkg/chainstore/", "pkg/logtree/", "pkg/packstore/",
}

// Merge fills p's unset fields from the default. Scanning Lucid itself
// adds its chain services and chain library to the core paths, and
// requires no payment tree: the default ones are isolated only where they
// exist. Isolated dirs that a policy names must exist.
func (p Policy) Merge(root string) Policy {
	d := Default()
	if p.CorePaths == nil {
		p.CorePaths = d.CorePaths
		if modulePath(root) == lucidModule {
			p.CorePaths = append(append([]string{}, d.CorePaths...), lucidCorePaths...)
		}
	}
	if p.ForbiddenTerms == nil {
		p.ForbiddenTerms = d.ForbiddenTerms
	}
	if p.ScopedTerms == nil {
		p.ScopedTerms = d.ScopedTerms
	}
	if p.IsolatedDirs == nil {
		p.IsolatedDirs = d.IsolatedDirs
		if modulePath(root) == lucidModule {
			// Lucid's payment system is a separate system, not a tree of
			// this one: a payment tree Lucid does not hold is nothing to
			// be isolated from, while one that appears is isolated.
			p.IsolatedDirs = existingDirs(root, d.IsolatedDirs)
		}
	}
	if p.IsolatedWarnTerms == nil {
		p.IsolatedWarnTerms = d.IsolatedWarnTerms
	}
	if p.ForbiddenModules == nil {
		p.ForbiddenModules = d.ForbiddenModules
	}
	if p.ExemptMarker == "" {
		p.ExemptMarker = d.ExemptMarker
	}
	if p.SkipDirs == nil {
		p.SkipDirs = d.SkipDirs
	}
	if p.SkipGlobs == nil {
		p.SkipGlobs = d.SkipGlobs
	}
	p.CorePaths = cleanDirs(p.CorePaths)
	p.IsolatedDirs = cleanDirs(p.IsolatedDirs)
	for i := range p.ScopedTerms {
		p.ScopedTerms[i].Paths = cleanDirs(p.ScopedTerms[i].Paths)
	}
	return p
}

// existingDirs are those of dirs that are directories under root.
func existingDirs(root string, dirs []string) []string {
	out := []string{}
	for _, d := range dirs {
		if st, err := os.Stat(filepath.Join(root, filepath.FromSlash(d))); err == nil && st.IsDir() {
			out = append(out, d)
		}
	}
	return out
}

// cleanDirs makes slash-separated directory prefixes ending in "/".
func cleanDirs(dirs []string) []string {
	out := make([]string, 0, len(dirs))
	for _, d := range dirs {
		d = path.Clean(strings.TrimPrefix(filepath.ToSlash(d), "./"))
		if d == "." {
			out = append(out, "")
			continue
		}
		out = append(out, strings.TrimSuffix(d, "/")+"/")
	}
	return out
}

// under reports whether rel (a slash path) is inside one of dirs.
func under(rel string, dirs []string) bool {
	for _, d := range dirs {
		if d == "" || strings.HasPrefix(rel, d) || rel+"/" == d {
			return true
		}
	}
	return false
}

// modulePath is the module declared by root's go.mod, or "".
func modulePath(root string) string {
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return ""
	}
	return modfile.ModulePath(data)
}
