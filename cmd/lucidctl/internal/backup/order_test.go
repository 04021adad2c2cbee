package backup

import (
	"slices"
	"testing"

	"github.com/pickme/lucid/pkg/catalog"
)

// TestCopiesFollowTheServicesTheyFollow: a service's copy is taken before
// the copy of every service it depends on, so that what it knows of that
// service (anchors sealed, blocks indexed) is in that service's copy.
func TestCopiesFollowTheServicesTheyFollow(t *testing.T) {
	for i, name := range Services {
		needs, err := catalog.Closure([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range needs {
			if j := slices.Index(Services, d.Name); d.Name != name && j >= 0 && j < i {
				t.Errorf("%s's copy is taken after that of %s, which it depends on: %v", name, d.Name, Services)
			}
		}
	}
}
