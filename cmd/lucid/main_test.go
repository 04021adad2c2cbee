package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/catalog"
)

func TestEveryCatalogServiceHasAnImplementation(t *testing.T) {
	for _, s := range catalog.Services {
		if apps[s.Name] == nil {
			t.Errorf("catalog service %q has no entry in apps", s.Name)
		}
	}
	if len(apps) != len(catalog.Services) {
		t.Errorf("apps has %d entries, the catalog %d", len(apps), len(catalog.Services))
	}
}

func TestHelpListsServices(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, s := range catalog.Services {
		if !strings.Contains(out.String(), "  "+s.Name+" ") {
			t.Errorf("--help does not list %s:\n%s", s.Name, out.String())
		}
	}
}

func TestGatewayWithoutSecretRefusesToStart(t *testing.T) {
	t.Setenv("JWT_SECRET_KEY", "")
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"gateway"}, &out, &errOut)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), "JWT_SECRET_KEY: is required") {
		t.Errorf("stderr does not name JWT_SECRET_KEY: %q", errOut.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"gatway"}, {"engine", "extra"}, {"engine", "--bogus"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("lucid %v: exit %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}

func TestVersionJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"version", "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var v map[string]string
	if err := json.Unmarshal(out.Bytes(), &v); err != nil || v["go_version"] == "" {
		t.Errorf("version --json = %q (%v)", out.String(), err)
	}
}
