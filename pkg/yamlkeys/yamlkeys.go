// Package yamlkeys finds the keys of a YAML document that the Go type it
// decodes into has no field for: every one, with its line and column, the
// keys allowed there and the likely intended one. yaml.v3's KnownFields
// stops at the first and names the Go type instead.
package yamlkeys

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrUnknownKey marks an unknown key.
var ErrUnknownKey = errors.New("unknown key")

// Check reports every mapping key of document (a yaml.DocumentNode, or
// any node) that v's type, which it decodes into, has no field for. file
// names the document in messages.
func Check(file string, document *yaml.Node, v any) []error {
	n := document
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	return checkKeys(file, n, reflect.TypeOf(v), "")
}

// checkKeys walks the YAML tree alongside the Go type it decodes into.
func checkKeys(file string, n *yaml.Node, t reflect.Type, at string) []error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // a type error; the decoder reports it
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if merges(k) {
				errs = append(errs, checkMerged(file, v, t, at)...)
				continue
			}
			f, ok := fields[k.Value]
			if !ok {
				errs = append(errs, unknownKey(file, k, at, fields))
				continue
			}
			errs = append(errs, checkKeys(file, v, f.Type, join(at, k.Value))...)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; merges(k) {
				errs = append(errs, checkMerged(file, n.Content[i+1], t, at)...)
				continue
			}
			errs = append(errs, checkKeys(file, n.Content[i+1], t.Elem(), join(at, n.Content[i].Value))...)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, item := range n.Content {
			errs = append(errs, checkKeys(file, item, t.Elem(), fmt.Sprintf("%s[%d]", at, i))...)
		}
	}
	return errs
}

// merges reports whether k is YAML's merge key, "<<": its value, a
// mapping or a list of them (anchored elsewhere, as a rule), is read as if
// its keys stood where it does.
func merges(k *yaml.Node) bool { return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" }

// checkMerged checks what a merge key brings in, against the type of the
// mapping it is merged into.
func checkMerged(file string, v *yaml.Node, t reflect.Type, at string) []error {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind != yaml.SequenceNode {
		return checkKeys(file, v, t, at)
	}
	var errs []error
	for _, item := range v.Content {
		errs = append(errs, checkKeys(file, item, t, at)...)
	}
	return errs
}

func join(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f
	}
	return out
}

func unknownKey(file string, k *yaml.Node, at string, fields map[string]reflect.StructField) error {
	known := make([]string, 0, len(fields))
	for name := range fields {
		known = append(known, name)
	}
	slices.Sort(known)
	where := "at the top level"
	if at != "" {
		where = "in " + at
	}
	msg := fmt.Sprintf("%s:%d:%d: %s %q %s", file, k.Line, k.Column, ErrUnknownKey, k.Value, where)
	if s := Closest(k.Value, known); s != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", s)
	}
	msg += "; known keys: " + strings.Join(known, ", ")
	return &keyError{msg}
}

type keyError struct{ msg string }

func (e *keyError) Error() string        { return e.msg }
func (e *keyError) Is(target error) bool { return target == ErrUnknownKey }

// Closest returns the candidate within edit distance 2 of s, if any: the
// "did you mean" of every name a user types (keys, metrics, services).
func Closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
