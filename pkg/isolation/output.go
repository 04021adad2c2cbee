package isolation

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"unicode/utf16"
)

// WriteJSON writes the report in its stable shape:
// {"violations":[...],"warnings":[...],"files_scanned":N}.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the findings grouped by file, each with its line and
// the match marked by mark (which may add color).
func WriteText(w io.Writer, r *Report, mark func(string) string) error {
	var b strings.Builder
	group := func(title string, fs []Finding) {
		if len(fs) == 0 {
			return
		}
		fmt.Fprintf(&b, "%s:\n", title)
		last := ""
		for _, f := range fs {
			if f.Path != last {
				fmt.Fprintf(&b, "  %s\n", f.Path)
				last = f.Path
			}
			if f.Line == 0 {
				fmt.Fprintf(&b, "    %s (%s)\n", f.Message, f.Rule)
				continue
			}
			fmt.Fprintf(&b, "    %d:%d  %s (%s)\n", f.Line, f.Column, f.Message, f.Rule)
			if f.Text != "" && f.Column >= 1 && f.Column-1+len(f.Match) <= len(f.Text) {
				at := f.Column - 1
				line := f.Text[:at] + mark(f.Text[at:at+len(f.Match)]) + f.Text[at+len(f.Match):]
				fmt.Fprintf(&b, "        %s\n", strings.TrimSpace(line))
			}
		}
	}
	group("violations", r.Violations)
	group("warnings", r.Warnings)
	fmt.Fprintf(&b, "%d files scanned, %d violations, %d warnings\n", r.FilesScanned, len(r.Violations), len(r.Warnings))
	_, err := io.WriteString(w, b.String())
	return err
}

// Rule descriptions, for SARIF.
var ruleHelp = map[string]string{
	RuleTerm:         "A forbidden term (the payment system's names) in core code.",
	RuleCoreTerm:     "A term forbidden under part of the core.",
	RuleImport:       "Core code imports, directly or through the tree's own packages, the payment tree or a forbidden module.",
	RuleMissingDir:   "The isolated payment tree does not exist.",
	RuleMentionsCore: "The payment tree mentions the core.",
}

// WriteSARIF writes the report as SARIF 2.1.0, for code-scanning UIs.
func WriteSARIF(w io.Writer, r *Report, version string) error {
	type region struct {
		StartLine   int `json:"startLine,omitempty"`
		StartColumn int `json:"startColumn,omitempty"`
	}
	type location struct {
		PhysicalLocation struct {
			ArtifactLocation struct {
				URI string `json:"uri"`
			} `json:"artifactLocation"`
			Region *region `json:"region,omitempty"`
		} `json:"physicalLocation"`
	}
	type text struct {
		Text string `json:"text"`
	}
	type result struct {
		RuleID    string     `json:"ruleId"`
		Level     string     `json:"level"`
		Message   text       `json:"message"`
		Locations []location `json:"locations"`
	}
	type rule struct {
		ID               string `json:"id"`
		ShortDescription text   `json:"shortDescription"`
	}
	var rules []rule
	for _, id := range []string{RuleTerm, RuleCoreTerm, RuleImport, RuleMissingDir, RuleMentionsCore} {
		rules = append(rules, rule{ID: id, ShortDescription: text{ruleHelp[id]}})
	}
	results := []result{}
	add := func(fs []Finding, level string) {
		for _, f := range fs {
			var loc location
			loc.PhysicalLocation.ArtifactLocation.URI = uriOf(f.Path)
			if f.Line > 0 {
				loc.PhysicalLocation.Region = &region{StartLine: f.Line, StartColumn: utf16Column(f)}
			}
			results = append(results, result{RuleID: f.Rule, Level: level, Message: text{f.Message}, Locations: []location{loc}})
		}
	}
	add(r.Violations, "error")
	add(r.Warnings, "warning")
	doc := map[string]any{
		"$schema": "https://json.schemastore.org/sarif-2.1.0.json",
		"version": "2.1.0",
		"runs": []any{map[string]any{
			"tool": map[string]any{"driver": map[string]any{
				"name": "lucidctl verify tron-isolation", "version": version,
				"informationUri": "https://github.com/pickme/lucid/blob/main/docs/isolation.md", "rules": rules,
			}},
			"results": results,
		}},
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// uriOf percent-encodes each segment of a slash path: a valid URI
// reference, relative to the scanned root.
func uriOf(p string) string {
	segs := strings.Split(strings.TrimSuffix(p, "/"), "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return strings.Join(segs, "/")
}

// utf16Column converts a finding's byte column to SARIF's default unit,
// UTF-16 code units, when the line is known.
func utf16Column(f Finding) int {
	if f.Text == "" || f.Column < 1 || f.Column-1 > len(f.Text) {
		return f.Column
	}
	return len(utf16.Encode([]rune(f.Text[:f.Column-1]))) + 1
}
