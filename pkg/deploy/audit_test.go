package deploy

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestAuditLogSpeaksForItsHost: every entry read from a host's audit log
// is that host's, whatever target a line names (one planted there to
// show up as another host's in the operator's table).
func TestAuditLogSpeaksForItsHost(t *testing.T) {
	f, _ := lockFixture(t)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	line := `{"time":"2026-12-05T10:15:03Z","target":"pi2","user":"mallory","host":"x","action":"deploy","result":"ok"}` + "\n"
	if err := os.WriteFile(filepath.Join(f.dir, AuditFile), []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Name: "pi1", SSH: f.dial(t), Dir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	entries, err := d.AuditLog(context.Background(), time.Time{})
	if err != nil || len(entries) != 1 || entries[0].Target != "pi1" {
		t.Errorf("entries %+v, %v: want one, of pi1", entries, err)
	}
}
