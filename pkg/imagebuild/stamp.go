package imagebuild

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// sourceURL is where Lucid's source lives, for the images' labels.
const sourceURL = "https://github.com/pickme/lucid"

// Stamp is what a build records of its source.
type Stamp struct {
	Version, Commit, Source string
	Created                 time.Time
}

// ReadStamp reads the version, commit and commit time from git;
// SOURCE_DATE_EPOCH, when set, is the creation time. Without git the
// version is "dev" and the time the Unix epoch, which keeps builds
// reproducible.
func ReadStamp(ctx context.Context, dir string, getenv func(string) string) Stamp {
	git := func(args ...string) string {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	s := Stamp{Version: git("describe", "--tags", "--always", "--dirty"), Commit: git("rev-parse", "HEAD"), Source: sourceURL}
	if s.Version == "" {
		s.Version = "dev"
	}
	if s.Commit == "" {
		s.Commit = "unknown"
	}
	if ts, err := strconv.ParseInt(git("log", "-1", "--format=%ct"), 10, 64); err == nil {
		s.Created = time.Unix(ts, 0).UTC()
	}
	if t, ok := sourceDateEpoch(getenv); ok {
		s.Created = t
	}
	return s
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH, the reproducible-builds way of
// fixing a build's time.
func sourceDateEpoch(getenv func(string) string) (time.Time, bool) {
	ts, err := strconv.ParseInt(getenv("SOURCE_DATE_EPOCH"), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(ts, 0).UTC(), true
}
