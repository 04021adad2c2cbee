package backup

import (
	"slices"
	"strings"
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

// TestBackupsNeedWholeEnvFiles: a release whose env files are gone, or
// one of them empty (read so from a failing card), is not backed up: its
// backup could not restore the keys the data is read with.
func TestBackupsNeedWholeEnvFiles(t *testing.T) {
	for name, tt := range map[string]struct {
		files map[string][]byte
		want  string
	}{
		"whole":   {files: map[string][]byte{"configs/environment/datachain.env": []byte("ENCRYPTION_KEY=x\n")}},
		"none":    {files: map[string][]byte{}, want: "pi: release r1 holds no env files"},
		"a blank": {files: map[string][]byte{"configs/environment/engine.env": []byte("A=1\n"), "configs/environment/datachain.env": nil}, want: "pi: release r1's configs/environment/datachain.env is empty"},
	} {
		err := wholeEnvFiles("pi", "r1", tt.files)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "nothing was backed up")):
			t.Errorf("%s: %v, want %q", name, err, tt.want)
		}
	}
}
