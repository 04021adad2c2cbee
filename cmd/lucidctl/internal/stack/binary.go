package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
)

// findLucid returns the lucid binary to supervise: the one given, the one
// next to lucidctl, the one on PATH, or one built from the source tree that
// the working directory is in.
func findLucid(ctx context.Context, given, buildDir string, progress io.Writer) (string, error) {
	exeName := "lucid"
	if runtime.GOOS == "windows" {
		exeName += ".exe"
	}
	if given != "" {
		if !isExecutable(given) {
			return "", fmt.Errorf("--lucid %s: not an executable file", given)
		}
		return filepath.Abs(given)
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), exeName); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath(exeName); err == nil {
		return filepath.Abs(p)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := cli.SourceRoot(wd)
	if root == "" {
		return "", cli.WithHint(errors.New("cannot find the lucid binary: it is not next to lucidctl, not on PATH, and this is not the Lucid source tree"),
			"install lucid beside lucidctl, or pass --lucid PATH")
	}
	out := filepath.Join(buildDir, exeName)
	fmt.Fprintf(progress, "building lucid from %s ...\n", root)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/lucid")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = progress, progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build lucid from source: %w", err)
	}
	return out, nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	if err != nil || fi.IsDir() {
		return false
	}
	return runtime.GOOS == "windows" || fi.Mode().Perm()&0o111 != 0
}

// consulVersion is the Consul agent scripts/build-consul.sh builds: the
// last MPL-2.0 release.
const consulVersion = "v1.14.11"

// consulCache is where scripts/build-consul.sh keeps the agent it builds:
// $LUCID_TOOLS_DIR, else $XDG_CACHE_HOME/lucid/tools, else
// ~/.cache/lucid/tools.
func consulCache(getenv func(string) string) string {
	dir := getenv("LUCID_TOOLS_DIR")
	if dir == "" {
		cache := getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return ""
			}
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "lucid", "tools")
	}
	return filepath.Join(dir, "consul-"+consulVersion)
}

// consulPlaces says where "auto" looks for Consul, for messages.
func consulPlaces(getenv func(string) string) string {
	return "LUCID_CONSUL_BIN, consul on PATH, " + consulCache(getenv)
}

// findConsul resolves the consul setting: "off", "auto" (LUCID_CONSUL_BIN,
// consul on PATH, or the agent scripts/build-consul.sh cached, if any),
// "build" (that script's build, run now unless cached) or a path. It
// returns "" when Consul is not to be supervised.
func findConsul(ctx context.Context, setting string, getenv func(string) string, progress io.Writer) (string, error) {
	switch setting {
	case consulOff, "":
		return "", nil
	case consulAuto:
		candidates := []string{getenv("LUCID_CONSUL_BIN")}
		if p, err := exec.LookPath("consul"); err == nil {
			candidates = append(candidates, p)
		}
		candidates = append(candidates, consulCache(getenv))
		for _, c := range candidates {
			if c != "" && isExecutable(c) {
				return filepath.Abs(c)
			}
		}
		return "", nil
	case consulBuild:
		return buildConsul(ctx, progress)
	}
	if !isExecutable(setting) {
		return "", fmt.Errorf("consul binary %s: not an executable file", setting)
	}
	return filepath.Abs(setting)
}

// The settings of --consul and local.consul beside a path.
const (
	consulAuto  = "auto"
	consulOff   = "off"
	consulBuild = "build"
)

// buildConsul runs scripts/build-consul.sh of the source tree the working
// directory is in, which builds the agent from the Go module proxy once
// and caches it, and returns the binary's path (the script's output).
func buildConsul(ctx context.Context, progress io.Writer) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := cli.SourceRoot(wd)
	if root == "" {
		return "", cli.WithHint(errors.New("--consul build needs the Lucid source tree (its scripts/build-consul.sh)"),
			"run it from a checkout, or install consul on PATH, or pass --consul PATH")
	}
	fmt.Fprintf(progress, "building Consul %s (a few minutes the first time, then cached) ...\n", consulVersion)
	var out strings.Builder
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "build-consul.sh"))
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &out, progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build consul with scripts/build-consul.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if bin := strings.TrimSpace(lines[len(lines)-1]); isExecutable(bin) {
		return bin, nil
	}
	return "", fmt.Errorf("scripts/build-consul.sh printed no consul binary (%q)", out.String())
}
