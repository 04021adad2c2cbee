package operate

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deploy"
)

func TestTakesEngineDown(t *testing.T) {
	for _, tc := range []struct {
		action   deploy.AuditAction
		services []string
		want     bool
	}{
		{deploy.AuditRestart, nil, true},
		{deploy.AuditRestart, []string{"gateway", "engine"}, true},
		{deploy.AuditRestart, []string{"gateway"}, false},
		{deploy.AuditStop, nil, true},
		{deploy.AuditStop, []string{"engine"}, true},
		{deploy.AuditStop, []string{"anchoring"}, false},
		{deploy.AuditStart, nil, false},
		{deploy.AuditStart, []string{"engine"}, false},
	} {
		if got := takesEngineDown(tc.action, tc.services); got != tc.want {
			t.Errorf("%s %v: %v, want %v", tc.action, tc.services, got, tc.want)
		}
	}
}

// TestQuorumGateReadsTheCluster: a restart of pi1's engine, pi1 a host of
// a three-host cluster, reads the cluster's other hosts, which the command
// does not act on, to judge the quorum, and says which it could not reach;
// a restart that leaves the engine alone reads none of them.
func TestQuorumGateReadsTheCluster(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	var dead [2]int
	for i := range dead {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead[i] = ln.Addr().(*net.TCPAddr).Port
		if err := ln.Close(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	target := func(name, host string, port int, addr string) string {
		return fmt.Sprintf("  %s:\n    host: %s\n    port: %d\n    user: %s\n    dir: %s\n    cluster_address: %s\n", name, host, port, s.User, filepath.Join(dir, name), addr)
	}
	yml := "targets:\n" + target("pi1", s.Host, s.Port, "10.0.0.11") + target("pi2", "127.0.0.1", dead[0], "10.0.0.12") + target("pi3", "127.0.0.1", dead[1], "10.0.0.13") +
		"clusters:\n  chain:\n    hosts: [pi1, pi2, pi3]\n"
	p := filepath.Join(dir, "lucid.yaml")
	if err := os.WriteFile(p, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}

	_, errOut, err := run(t, p, s, false, "restart", "--target", "pi1", "engine")
	if err == nil || !strings.Contains(err.Error(), "nothing is deployed") {
		t.Fatalf("restart of the engine on a host without a release: %v\n%s", err, errOut)
	}
	for _, h := range []string{"pi2", "pi3"} {
		if !strings.Contains(errOut, h) || !strings.Contains(errOut, "a host of cluster chain, not acted on, not reached to read its voter") {
			t.Errorf("stderr does not say %s of the cluster was not reached to read it:\n%s", h, errOut)
		}
	}
	_, errOut, err = run(t, p, s, false, "restart", "--target", "pi1", "gateway")
	if err == nil || strings.Contains(errOut, "not reached to read its voter") {
		t.Errorf("a restart of the gateway alone read the cluster: %v\n%s", err, errOut)
	}
}
