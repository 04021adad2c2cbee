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

// findConsul resolves the consul setting: "off", "auto" (PATH, if any) or a
// path. It returns "" when Consul is not to be supervised.
func findConsul(setting string) (string, error) {
	switch setting {
	case "off", "":
		return "", nil
	case "auto":
		if p, err := exec.LookPath("consul"); err == nil {
			return filepath.Abs(p)
		}
		return "", nil
	}
	if !isExecutable(setting) {
		return "", fmt.Errorf("consul binary %s: not an executable file", setting)
	}
	return filepath.Abs(setting)
}
