package imagebuild

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The stamp the tests' ready binaries carry, as `make build` sets it.
const (
	knownVersion = "v1.2.3-known"
	knownCommit  = "0123456789abcdef0123456789abcdef01234567"
	knownStamp   = "-X " + buildinfoVersion + "=" + knownVersion + " -X " + buildinfoCommit + "=" + knownCommit
)

var (
	stampedOnce sync.Once
	stamped     map[string]string
	stampedErr  error
)

// stampedBinaries builds linux/amd64 lucid binaries stamped with the
// known version, once: "ldflags" without -trimpath, so Go records the
// flags; "symbols" with -trimpath but keeping the symbol table; "stripped"
// with -trimpath and -s, which says its version nowhere it can be found.
func stampedBinaries(t *testing.T) map[string]string {
	t.Helper()
	stampedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lucid-stamped-")
		if err != nil {
			stampedErr = err
			return
		}
		stamped = map[string]string{}
		for name, flags := range map[string][]string{
			"ldflags":  {"-ldflags", "-s -w " + knownStamp},
			"symbols":  {"-trimpath", "-ldflags", "-w " + knownStamp},
			"stripped": {"-trimpath", "-ldflags", "-s -w " + knownStamp},
		} {
			out := filepath.Join(dir, name)
			cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", out, "./cmd/lucid")...)
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=-buildvcs=false")
			if b, err := cmd.CombinedOutput(); err != nil {
				stampedErr = fmt.Errorf("%w\n%s", err, b)
				return
			}
			stamped[name] = out
		}
	})
	if stampedErr != nil {
		t.Fatalf("go build: %v", stampedErr)
	}
	return stamped
}

func TestReadBinaryFindsTheStamp(t *testing.T) {
	for _, name := range []string{"ldflags", "symbols"} {
		b, err := ReadBinary(stampedBinaries(t)[name])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b.Stamp.Version != knownVersion || b.Stamp.Commit != knownCommit || b.GOOS != "linux" || b.GOARCH != "amd64" {
			t.Errorf("%s: read %+v", name, b)
		}
	}
	// Compile's own recipe (-trimpath, no DWARF, the symbol table kept),
	// as the Makefile's and GoReleaser's: the release of a ready binary
	// carries its version.
	b, err := ReadBinary(lucidBinaries(t)["linux/amd64"])
	if err != nil {
		t.Fatal(err)
	}
	if b.Stamp.Version != "v0.0.0-test" || b.Stamp.Commit != "testcommit" {
		t.Errorf("a binary of Compile's read as %+v", b.Stamp)
	}
	if b, err := ReadBinary(stampedBinaries(t)["stripped"]); err != nil || b.Stamp.Version != "" || b.Stamp.Commit != "unknown" {
		t.Errorf("a -trimpath -s binary read as %+v, %v", b.Stamp, err)
	}
}

func TestReadBinaryRefusesOtherPrograms(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadBinary(self); err == nil || !strings.Contains(err.Error(), "not lucid") {
		t.Errorf("the test binary as lucid: %v", err)
	}
	text := filepath.Join(t.TempDir(), "lucid")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadBinary(text); err == nil {
		t.Error("a shell script read as lucid")
	}
}

// TestBuildLabelsAReadyBinaryWithItsVersion: images made from a ready
// binary carry the version it was stamped with, not "dev".
func TestBuildLabelsAReadyBinaryWithItsVersion(t *testing.T) {
	ctx := context.Background()
	amd := testPlatforms[0]
	spec := func(bin, version string, p v1.Platform) Spec {
		return Spec{
			Platforms: []v1.Platform{p}, Binaries: map[string]string{p.String(): bin}, Version: version,
			Base: BaseScratch, CACerts: []byte("test bundle\n"), ImageName: "example.invalid/lucid-{service}", Tag: "t",
			Getenv: func(k string) string { return map[string]string{"SOURCE_DATE_EPOCH": "1700000000"}[k] },
		}
	}
	res, err := Build(ctx, spec(stampedBinaries(t)["ldflags"], "", amd))
	if err != nil {
		t.Fatal(err)
	}
	if res.Stamp.Version != knownVersion || res.Stamp.Commit != knownCommit || !res.Stamp.Created.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("stamp %+v", res.Stamp)
	}
	cf, err := res.Images[0].Images[0].Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if l := cf.Config.Labels; l["org.opencontainers.image.version"] != knownVersion || l["org.opencontainers.image.revision"] != knownCommit {
		t.Errorf("labels %v", l)
	}

	// A binary that does not say its version takes --version; one that
	// says another refuses it; one for another platform is refused.
	stripped := stampedBinaries(t)["stripped"]
	if res, err := Build(ctx, spec(stripped, "v9.9.9", amd)); err != nil || res.Stamp.Version != "v9.9.9" {
		t.Errorf("a stripped binary with a version: %v, %+v", err, res.Stamp)
	}
	if res, err := Build(ctx, spec(stripped, "", amd)); err != nil || res.Stamp.Version != "dev" {
		t.Errorf("a stripped binary without a version: %v, %+v", err, res.Stamp)
	}
	if _, err := Build(ctx, spec(stampedBinaries(t)["ldflags"], "v9.9.9", amd)); err == nil || !strings.Contains(err.Error(), "is version "+knownVersion) {
		t.Errorf("a version the binary contradicts: %v", err)
	}
	if _, err := Build(ctx, spec(stripped, "", testPlatforms[1])); err == nil || !strings.Contains(err.Error(), "built for linux/amd64, not linux/arm64") {
		t.Errorf("an amd64 binary for arm64: %v", err)
	}
}

// TestDynamicBinaryIsRefused: a lucid built with cgo would not start in an
// image without a C library, so it is refused before it is shipped.
func TestDynamicBinaryIsRefused(t *testing.T) {
	if dyn, err := dynamicallyLinked("/bin/sh"); err != nil || !dyn {
		t.Errorf("/bin/sh: dynamic %v, %v", dyn, err)
	}
	if dyn, err := dynamicallyLinked(stampedBinaries(t)["ldflags"]); err != nil || dyn {
		t.Errorf("a CGO_ENABLED=0 lucid: dynamic %v, %v", dyn, err)
	}
}
