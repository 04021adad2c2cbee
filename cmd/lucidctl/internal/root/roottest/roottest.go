// Package roottest lets a package's test binary stand in for lucidctl, so
// that tests can start it again as a process of its own: the background
// supervisor that `up -d` starts, or a lucidctl a test kills halfway.
package roottest

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
)

// EnvAsCLI is the variable that, set to 1 in its environment, makes the
// test binary run as lucidctl.
const EnvAsCLI = "LUCIDCTL_TEST_AS_CLI"

// RunAsCLI runs the test binary as lucidctl, with its arguments, and exits
// with lucidctl's code when EnvAsCLI says so; otherwise it returns. A
// TestMain calls it first.
func RunAsCLI() {
	if os.Getenv(EnvAsCLI) != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := root.Execute(ctx, os.Args[1:], iostreams.System(), os.Getenv)
	stop()
	os.Exit(code)
}

// Main is the TestMain of tests that run a stack: the test binary acts as
// lucidctl when `up -d` starts it again (EnvAsCLI is set for every process
// the tests start), and *lucidBin is the lucid binary build makes once
// (testenv.BuildLucid), in a directory removed after the tests. It does
// not return.
func Main(m *testing.M, build func(dir string) (string, error), lucidBin *string) {
	RunAsCLI()
	if err := os.Setenv(EnvAsCLI, "1"); err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "lucid-test-bin")
	if err != nil {
		panic(err)
	}
	if *lucidBin, err = build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	// TestMain has no t.TempDir; a directory it cannot remove fails the run
	// as t.TempDir's cleanup would.
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = max(code, 1)
	}
	os.Exit(code)
}
