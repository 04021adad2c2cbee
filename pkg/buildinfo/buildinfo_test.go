package buildinfo

import (
	"runtime"
	"testing"
)

func TestStampedValuesWin(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	Version, Commit = "v1.2.3", "0123456789abcdef0123"
	info := Read()
	if info.Version != "v1.2.3" || info.Commit != "0123456789abcdef0123" || info.GoVersion != runtime.Version() {
		t.Errorf("Read = %+v", info)
	}
	if got, want := info.String(), "v1.2.3 (0123456789ab, "+runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestUnstampedBuildSaysSo(t *testing.T) {
	defer func(v, c string) { Version, Commit = v, c }(Version, Commit)
	Version, Commit = "", ""
	info := Read()
	if info.Version == "" || info.Commit == "" {
		t.Errorf("empty fields in %+v; want dev/unknown placeholders", info)
	}
}
