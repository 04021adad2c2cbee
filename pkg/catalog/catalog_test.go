package catalog

import (
	"slices"
	"testing"
)

// TestStartOrder checks that Services is listed so that every service comes
// after the services it depends on, and that no dependency is unknown.
func TestStartOrder(t *testing.T) {
	seen := map[string]bool{}
	ports := map[int]string{}
	for _, s := range Services {
		for _, d := range slices.Concat(s.DependsOn, s.After) {
			if _, ok := Lookup(d); !ok {
				t.Errorf("%s depends on unknown service %q", s.Name, d)
			}
			if !seen[d] {
				t.Errorf("%s is listed before its dependency %s", s.Name, d)
			}
		}
		all := []int{s.Port}
		for _, p := range s.ExtraPorts {
			all = append(all, p)
		}
		for _, p := range all {
			if other, ok := ports[p]; ok {
				t.Errorf("%s and %s both use port %d", s.Name, other, p)
			}
			ports[p] = s.Name
		}
		seen[s.Name] = true
	}
}

func TestClosure(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{[]string{"engine"}, []string{"engine"}},
		{[]string{"datachain"}, []string{"engine", "anchoring", "datachain"}},
		{[]string{"gateway"}, []string{"gateway"}}, // it routes to the others, but needs none to start
		{[]string{"mesh", "blocks"}, []string{"mesh", "engine", "blocks"}},
	}
	for _, tt := range tests {
		got, err := Closure(tt.in)
		if err != nil {
			t.Fatalf("Closure(%v): %v", tt.in, err)
		}
		var names []string
		for _, s := range got {
			names = append(names, s.Name)
		}
		if !slices.Equal(names, tt.want) {
			t.Errorf("Closure(%v) = %v, want %v", tt.in, names, tt.want)
		}
	}
	if _, err := Closure([]string{"gatway"}); err == nil {
		t.Error("Closure of an unknown service: want an error")
	}
}
