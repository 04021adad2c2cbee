package imagebuild

import (
	"testing"
	"time"
)

func TestParsePlatforms(t *testing.T) {
	got, err := ParsePlatforms([]string{"linux/arm64", " linux/arm/v7 "})
	if err != nil || len(got) != 2 || got[0].String() != "linux/arm64" || got[1].String() != "linux/arm/v7" {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {"linux/"}, {"arm64"}, {""}} {
		if _, err := ParsePlatforms(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Every command that builds images labels them from the same stamp.
func TestStampLabelsOptions(t *testing.T) {
	s := Stamp{Version: "v1.2.3", Commit: "abc", Source: "https://example.org/lucid", Created: time.Unix(1700000000, 0)}
	var o Options
	s.Label(&o)
	if o.Version != s.Version || o.Revision != s.Commit || o.Source != s.Source || !o.Created.Equal(s.Created) {
		t.Errorf("options %+v from stamp %+v", o, s)
	}
}
