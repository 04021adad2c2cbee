package isolation

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const fixture = "../../testdata/isolation/tree"

func TestTokens(t *testing.T) {
	terms := set(Default().ForbiddenTerms)
	for _, found := range []string{"TronWeb", "tron_client", "isTronAddress", "TRON_API_KEY", "amountTRX", "usdtBalance", "trc20", "TRXAmount", "tronpy.keys", "'tron'"} {
		if len(findTerms(found, terms)) == 0 {
			t.Errorf("%q: no term found", found)
		}
	}
	for _, clean := range []string{"strong", "electronic", "patron", "metronome", "MATRIX", "Astronomy", "electron", "gotron", "trxn", "usdtx"} {
		if m := findTerms(clean, terms); len(m) > 0 {
			t.Errorf("%q: found %v", clean, m)
		}
	}
	// Columns point at the match.
	m := findTerms("let amountTRX = 1", terms)
	if len(m) != 1 || m[0].col != 10 || m[0].text != "TRX" {
		t.Errorf("amountTRX: %+v", m)
	}
}

// TestFixtureGolden scans the fixture tree: every true positive (terms in
// code, comments, strings, config; Go imports direct and transitive
// through an internal package; Python from-import with an alias; a JS
// dynamic require and import), none of the traps, the exempt line, the
// skipped node_modules, log and binary file; compared exactly.
func TestFixtureGolden(t *testing.T) {
	rep, err := Scan(context.Background(), fixture, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := WriteJSON(&got, rep); err != nil {
		t.Fatal(err)
	}
	golden := "../../testdata/isolation/tree.golden.json"
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != string(want) {
		t.Errorf("JSON differs from %s (go test -update to accept):\n%s", golden, got.String())
	}
	// The shape is exactly the documented one.
	var shape map[string]json.RawMessage
	_ = json.Unmarshal(got.Bytes(), &shape)
	var keys []string
	for k := range shape {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if strings.Join(keys, ",") != "files_scanned,violations,warnings" {
		t.Errorf("top-level keys %v", keys)
	}
	var one []map[string]any
	_ = json.Unmarshal(shape["violations"], &one)
	var fields []string
	for k := range one[0] {
		fields = append(fields, k)
	}
	slices.Sort(fields)
	if strings.Join(fields, ",") != "column,line,match,message,path,rule" {
		t.Errorf("finding fields %v", fields)
	}
	for _, f := range rep.Violations {
		if strings.Contains(f.Path, "traps.md") || strings.Contains(f.Path, "node_modules") || strings.HasSuffix(f.Path, ".log") || strings.HasSuffix(f.Path, ".bin") {
			t.Errorf("flagged %s", f.Path)
		}
		if f.Path == "blockchain/core/ledger.go" && f.Line == 11 {
			t.Error("the exempt line was flagged")
		}
	}
}

func TestMissingPaymentTree(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "blockchain"), 0o755); err != nil {
		t.Fatal(err)
	}
	rep, err := Scan(context.Background(), dir, Policy{IsolatedDirs: []string{"payment-systems/tron", "payment-systems/usdt/"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Violations) != 2 || rep.Violations[0].Rule != RuleMissingDir || rep.Violations[1].Path != "payment-systems/usdt/" {
		t.Errorf("violations %+v", rep.Violations)
	}
}

// The default payment tree is required in any tree but Lucid's, and in
// Lucid's when a policy names it; in Lucid's, one that exists is still
// isolated: reaching it from the chain code is a violation.
func TestPaymentTreeOfLucid(t *testing.T) {
	write := func(root, rel, text string) {
		t.Helper()
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rules := func(root string, p Policy) []string {
		t.Helper()
		rep, err := Scan(context.Background(), root, p)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, f := range rep.Violations {
			out = append(out, f.Rule+" "+f.Path)
		}
		return out
	}
	other := t.TempDir()
	write(other, "go.mod", "module example.com/blockchain\n")
	if got := rules(other, Policy{}); !slices.Equal(got, []string{RuleMissingDir + " payment-systems/tron/"}) {
		t.Errorf("another tree without the payment tree: %v", got)
	}

	lucid := t.TempDir()
	write(lucid, "go.mod", "module "+lucidModule+"\n")
	write(lucid, "pkg/chain/chain.go", "package chain\n\nimport _ \""+lucidModule+"/payment-systems/tron/wallet\"\n")
	// Without terms, so that only the import rule sees the import.
	noTerms := Policy{ForbiddenTerms: []string{}}
	if got := rules(lucid, noTerms); len(got) != 0 {
		t.Errorf("Lucid without a payment tree: %v", got)
	}
	if got := rules(lucid, Policy{ForbiddenTerms: []string{}, IsolatedDirs: []string{"payment-systems/tron/"}}); !slices.Contains(got, RuleMissingDir+" payment-systems/tron/") {
		t.Errorf("Lucid with a policy naming the payment tree: %v", got)
	}
	write(lucid, "payment-systems/tron/wallet/wallet.go", "package wallet\n")
	if got := rules(lucid, noTerms); !slices.Equal(got, []string{RuleImport + " pkg/chain/chain.go"}) {
		t.Errorf("Lucid with a payment tree the chain code imports: %v", got)
	}
}

// TestPhase2ScriptDiffers runs the Phase 2 document's grep scan on the
// same tree and records where it is wrong: it flags the traps (and a
// binary file) and misses TRON_API_KEY, the capitalised Payment and the
// import chain, all of which this scan finds.
func TestPhase2ScriptDiffers(t *testing.T) {
	bash := testenv.Tool(t, "bash", "")
	script, err := filepath.Abs("../../testdata/isolation/phase2-verify-tron-isolation.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bash, script)
	cmd.Dir = fixture
	out, _ := cmd.CombinedOutput()
	flagged := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f, _, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(f, "blockchain/") {
			flagged[f] = true
		}
		if strings.HasPrefix(line, "grep: blockchain/") || strings.HasPrefix(line, "Binary file blockchain/") {
			flagged[strings.TrimSuffix(strings.Fields(strings.TrimPrefix(strings.TrimPrefix(line, "grep: "), "Binary file "))[0], ":")] = true
		}
	}
	rep, err := Scan(context.Background(), fixture, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	ours := map[string]bool{}
	for _, f := range rep.Violations {
		ours[f.Path] = true
	}
	if !flagged["blockchain/traps.md"] || ours["blockchain/traps.md"] {
		t.Errorf("the traps: grep flagged %v, this scan %v", flagged["blockchain/traps.md"], ours["blockchain/traps.md"])
	}
	if flagged["blockchain/core/ledger.go"] || !ours["blockchain/core/ledger.go"] {
		t.Errorf("TRON_API_KEY, Payment and the import chain: grep flagged %v, this scan %v", flagged["blockchain/core/ledger.go"], ours["blockchain/core/ledger.go"])
	}
	t.Logf("the Phase 2 script flagged %d files (%s); this scan finds violations in %d", len(flagged), keys(flagged), len(ours))
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// TestLucidScansClean: this project's own chain code passes under the
// default policy, as on a checkout. Lucid holds no payment code, so its
// scan has no isolated tree to require.
func TestLucidScansClean(t *testing.T) {
	rep, err := Scan(context.Background(), "../..", Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.FilesScanned < 30 {
		t.Errorf("scanned only %d files: the project's core paths were not applied", rep.FilesScanned)
	}
	for _, f := range rep.Violations {
		t.Errorf("%s:%d:%d %s", f.Path, f.Line, f.Column, f.Message)
	}
}

func TestSARIF(t *testing.T) {
	rep, err := Scan(context.Background(), fixture, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := WriteSARIF(&b, rep, "test"); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version string
		Runs    []struct {
			Results []struct {
				RuleID string
				Level  string
			}
		}
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != "2.1.0" || len(doc.Runs) != 1 || len(doc.Runs[0].Results) != len(rep.Violations)+len(rep.Warnings) {
		t.Fatalf("SARIF: version %s, %d runs", doc.Version, len(doc.Runs))
	}
}

// BenchmarkScan50k scans a generated tree of 50,000 files, a tenth of them
// under the core path.
func BenchmarkScan50k(b *testing.B) {
	root := b.TempDir()
	for i := range 50_000 {
		dir := filepath.Join(root, "src", fmt.Sprintf("d%03d", i/100))
		if i%10 == 0 {
			dir = filepath.Join(root, "blockchain", fmt.Sprintf("d%03d", i/100))
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		content := fmt.Sprintf("package p%d\n\n// A strong, electronic patron computes block %d.\nfunc F() int { return %d }\n", i, i, i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.go", i)), []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "payment-systems", "tron"), 0o755); err != nil {
		b.Fatal(err)
	}
	benchmarkCleanScan(b, root)
}

func TestReviewCases(t *testing.T) {
	terms := set(Default().ForbiddenTerms)
	for _, found := range []string{"TRXs", "USDTs", "sendTRXs"} {
		if len(findTerms(found, terms)) == 0 {
			t.Errorf("%q: plural not found", found)
		}
	}
	dir := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/root\n")
	write("payment-systems/tron/go.mod", "module example.com/pay\n")
	write("payment-systems/tron/pay/pay.go", "package pay\n")
	write("blockchain/core/a.go", "package core\n\nimport _ \"example.com/pay/pay\"\n")      // a nested module
	write("blockchain/lib/lib.go", "package lib\n")                                          // clean...
	write("blockchain/lib/lib_test.go", "package lib\n\nimport _ \"example.com/pay/pay\"\n") // ...but its test is not
	write("blockchain/core/b.go", "package core\n\nimport _ \"example.com/root/blockchain/lib\"\n")
	write("blockchain/py/tool.py", "import os; import tronapi\nfrom ...payment_systems.tron import client\nfrom ...payment_systems import (os, tron)\n")
	rep, err := Scan(context.Background(), dir, Policy{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range rep.Violations {
		if f.Rule == RuleImport {
			got[fmt.Sprintf("%s:%d:%s", f.Path, f.Line, f.Match)] = true
		}
	}
	for _, want := range []string{"blockchain/core/a.go:3:example.com/pay/pay", "blockchain/py/tool.py:1:tronapi", "blockchain/py/tool.py:2:...payment_systems.tron", "blockchain/py/tool.py:3:...payment_systems"} {
		if !got[want] {
			t.Errorf("missing import finding %s (got %v)", want, got)
		}
	}
	if got["blockchain/core/b.go:3:example.com/root/blockchain/lib"] {
		t.Error("a test-only import of lib reached its importer")
	}
}

// BenchmarkImportGraph scans a clean core of 400 Go packages, five files
// each, every file importing ten of the others: each import's search runs
// once, however many files repeat it.
func BenchmarkImportGraph(b *testing.B) {
	root := b.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module example.com/big\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "payment-systems", "tron"), 0o755); err != nil {
		b.Fatal(err)
	}
	const pkgs = 400
	for p := range pkgs {
		dir := filepath.Join(root, "blockchain", fmt.Sprintf("p%03d", p))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 5 {
			var imports strings.Builder
			for k := 1; k <= 10; k++ {
				fmt.Fprintf(&imports, "import _ \"example.com/big/blockchain/p%03d\"\n", (p+k*7+f)%pkgs)
			}
			src := fmt.Sprintf("package p%03d\n\n%s", p, imports.String())
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.go", f)), []byte(src), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	benchmarkCleanScan(b, root)
}

// benchmarkCleanScan times scans of root, which must find nothing. b.Loop
// starts the clock itself, after the setup.
func benchmarkCleanScan(b *testing.B, root string) {
	for b.Loop() {
		rep, err := Scan(context.Background(), root, Policy{})
		if err != nil || len(rep.Violations) != 0 {
			b.Fatalf("%v %v", err, rep.Violations)
		}
	}
}
