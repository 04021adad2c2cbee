package maintenance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
)

// TestAnInterruptedActionIsOnTheTrail: an action an interrupt ended (a
// rotation or a compaction that may have happened on the host) is still
// recorded in the host's audit trail.
func TestAnInterruptedActionIsOnTheTrail(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	c, err := sshx.Dial(context.Background(), sshx.Target{Host: s.Host, Port: s.Port, User: s.User},
		sshx.Options{KeyFiles: []string{s.ClientKey}, KnownHosts: s.KnownHosts, NoAgent: true, ConfigFile: "none"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := filepath.Join(t.TempDir(), "pi")
	h := &fleet.Host{Name: "pi", Target: projectconfig.Target{Dir: dir}, SSH: c}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Ctrl-C
	if err := recordMaintenance(ctx, h, []string{actionRotateCA}, context.Canceled); err != nil {
		t.Fatalf("recording after an interrupt: %v", err)
	}
	trail, err := os.ReadFile(filepath.Join(dir, deploy.AuditFile))
	if err != nil || !strings.Contains(string(trail), actionRotateCA) {
		t.Errorf("the trail after an interrupted rotation: %q, %v", trail, err)
	}
}
