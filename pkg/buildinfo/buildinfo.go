// Package buildinfo reports which build of Lucid is running: the version and
// commit stamped at link time, the Go toolchain and the platform.
//
// Release builds set Version and Commit with
//
//	-ldflags "-X github.com/pickme/lucid/pkg/buildinfo.Version=v1.2.3 -X github.com/pickme/lucid/pkg/buildinfo.Commit=abc123"
//
// A plain `go build` falls back to what the Go toolchain recorded.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Stamped at link time; see the package comment.
var (
	Version = ""
	Commit  = ""
)

// Info describes one build. Its JSON form is part of `lucidctl version --json`
// and must stay stable.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Read returns the running build's Info.
func Read() Info {
	info := Info{
		Version:   Version,
		Commit:    Commit,
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS,
		Arch:      runtime.GOARCH,
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
		if info.Commit == "" {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					info.Commit = s.Value
				}
			}
		}
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	return info
}

// String is the one-line form used in logs and `--version`.
func (i Info) String() string {
	return i.Version + " (" + shortCommit(i.Commit) + ", " + i.GoVersion + ", " + i.OS + "/" + i.Arch + ")"
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
