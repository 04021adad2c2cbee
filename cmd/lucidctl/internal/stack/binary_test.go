package stack

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
)

// TestFindConsulAuto: "auto" takes LUCID_CONSUL_BIN, else consul on PATH,
// else the agent the test command caches, else none.
func TestFindConsulAuto(t *testing.T) {
	if _, err := exec.LookPath("consul"); err == nil {
		t.Skip("a consul on PATH comes before the cache")
	}
	tools, other, xdg := t.TempDir(), t.TempDir(), t.TempDir()
	cached := filepath.Join(tools, "consul-"+consulVersion)
	named := filepath.Join(other, "consul")
	xdgCached := filepath.Join(xdg, "lucid", "tools", "consul-"+consulVersion)
	if err := os.MkdirAll(filepath.Dir(xdgCached), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cached, named, xdgCached} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	tests := []struct {
		name string
		vars map[string]string
		want string
	}{
		{"the cache", map[string]string{"LUCID_TOOLS_DIR": tools}, cached},
		{"LUCID_CONSUL_BIN first", map[string]string{"LUCID_TOOLS_DIR": tools, "LUCID_CONSUL_BIN": named}, named},
		{"none", map[string]string{"LUCID_TOOLS_DIR": other}, ""},
		{"XDG_CACHE_HOME", map[string]string{"XDG_CACHE_HOME": xdg}, xdgCached},
	}
	for _, tt := range tests {
		got, err := findConsul(context.Background(), consulAuto, env(tt.vars), io.Discard)
		if err != nil || got != tt.want {
			t.Errorf("%s: %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if got, _ := findConsul(context.Background(), consulOff, env(map[string]string{"LUCID_CONSUL_BIN": named}), io.Discard); got != "" {
		t.Errorf("off ran %s", got)
	}
}

// TestBuildConsulFindsTheCachedBuild: --consul build runs the test
// command's build, which returns the cached agent at once.
func TestBuildConsulFindsTheCachedBuild(t *testing.T) {
	cached := consulCache(os.Getenv)
	if !isExecutable(cached) {
		testenv.Missing(t, "the cached Consul agent (make consul)")
	}
	got, err := buildConsul(context.Background(), io.Discard)
	if err != nil || got != cached {
		t.Errorf("buildConsul = %q, %v; want %q", got, err, cached)
	}
}
