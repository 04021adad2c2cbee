package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// ExclusiveDocker gives the test this machine's Docker Engine to itself
// until it ends: a release is deployed as compose project "lucid" with
// fixed container names and host ports, so two tests deploying at once,
// from two packages of one `go test ./...`, would take each other's
// containers. It skips (fails when CI=true) without a running Engine.
func ExclusiveDocker(t testing.TB) {
	t.Helper()
	if err := exec.Command("docker", "version").Run(); err != nil {
		Missing(t, "a running Docker Engine")
	}
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "lucid-tests-docker.lock"), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	// Blocks until the test holding it ends; the kernel releases it if
	// that test's process dies.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil { // closing releases the lock
			t.Error(err)
		}
	})
}
