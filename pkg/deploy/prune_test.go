package deploy

import (
	"maps"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/container"
)

// TestPruneKeepsWhatContainersRunFrom: a release whose directory a running
// container works from is in use, current or not (a deploy cut off after
// its compose up); one whose containers are stopped, or a directory that
// only shares its name's start, is not.
func TestPruneKeepsWhatContainersRunFrom(t *testing.T) {
	h := &host{dir: "/srv/lucid"}
	rs := []Release{{ID: "20261207T100000Z-r3"}, {ID: "20261207T090000Z-r2", Current: true}, {ID: "20261207T080000Z-r1"}, {ID: "20261207T07"}}
	ran := func(state, dir string) container.Summary {
		return container.Summary{State: state, Labels: map[string]string{"com.docker.compose.project.working_dir": dir}}
	}
	list := []container.Summary{
		ran("running", "/srv/lucid/releases/20261207T100000Z-r3"),
		ran("restarting", "/srv/lucid/releases/20261207T090000Z-r2/compose"),
		ran("exited", "/srv/lucid/releases/20261207T080000Z-r1"),
		ran("running", "/srv/lucid/releases/20261207T070000Z-other"),
	}
	got := slices.Sorted(maps.Keys(h.inUse(rs, list)))
	if want := []string{"20261207T090000Z-r2", "20261207T100000Z-r3"}; !slices.Equal(got, want) {
		t.Errorf("in use: %v, want %v", got, want)
	}
	kept := h.alwaysKept(rs, list)
	if !kept(rs[0]) || !kept(rs[1]) || kept(rs[3]) {
		t.Errorf("kept whatever their age: r3 %v, r2 %v, the unused one %v; want true, true, false", kept(rs[0]), kept(rs[1]), kept(rs[3]))
	}
}
