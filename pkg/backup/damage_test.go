package backup_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
)

// TestOversizedBlobIsNotReadWhole: a blob replaced by a file of 512 MiB
// (anyone who can write to the backup disk can, without the identity) is
// refused by its size before it is read.
func TestOversizedBlobIsNotReadWhole(t *testing.T) {
	id := identity(t)
	dir := t.TempDir()
	repo, err := backup.InitRepository(t.Context(), dir, true)
	if err != nil {
		t.Fatal(err)
	}
	svc := fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": random(2, 1000)}))
	m := take(t, repo, []age.Recipient{id.Recipient()}, svc)
	sum := m.Services[0].Files[0].Pieces[0]
	const huge = 512 << 20
	if err := os.Truncate(filepath.Join(dir, "blobs", sum[:2], sum), huge); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rep, err := repo.Verify(t.Context(), m.ID, []age.Identity{id})
	runtime.ReadMemStats(&after)
	if err == nil || len(rep.Problems) != 1 {
		t.Fatalf("verify: %v %+v", err, rep)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
		t.Errorf("verifying a backup with one %d MiB blob allocated %d MiB: the blob was read whole before any check", huge>>20, grew>>20)
	}
}

// TestDamagedBlobDoesNotPoisonLaterBackups: a blob cut short (a bad
// sector, a truncated copy of the backup disk) is fetched again by the
// next backup of the same data, which can then be restored, rather than
// reused by every backup after it.
func TestDamagedBlobDoesNotPoisonLaterBackups(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		id := identity(t)
		dir := t.TempDir()
		repo, err := backup.InitRepository(t.Context(), dir, encrypted)
		if err != nil {
			t.Fatal(err)
		}
		var rcpt []age.Recipient
		if encrypted {
			rcpt = []age.Recipient{id.Recipient()}
		}
		svc := fake(t, backuptest.NewService("datachain", map[string][]byte{"chunks/packs/pack-000001.dat": random(7, 3*snapshotapi.PieceSize+5)}))
		first := take(t, repo, rcpt, svc)
		sum := first.Services[0].Files[0].Pieces[1]
		if err := os.Truncate(filepath.Join(dir, "blobs", sum[:2], sum), 100); err != nil {
			t.Fatal(err)
		}
		second := take(t, repo, rcpt, svc)
		if _, err := repo.Verify(t.Context(), second.ID, []age.Identity{id}); err != nil {
			t.Errorf("encrypted=%v: the backup taken after a blob was cut short cannot be restored (%d pieces reused, %d new): %v",
				encrypted, second.Totals.PiecesReused, second.Totals.PiecesNew, err)
		}
		if second.Totals.PiecesNew != 1 || second.Totals.PiecesReused != first.Totals.PiecesNew-1 {
			t.Errorf("encrypted=%v: %d pieces new, %d reused; want the damaged one new, the %d others reused", encrypted, second.Totals.PiecesNew, second.Totals.PiecesReused, first.Totals.PiecesNew-1)
		}
	}
}

// TestVerifyChecksWholeFiles: pieces each whole, but a manifest whose
// pieces do not make the file it names (its size or SHA-256 differs) is
// found by Verify, as a restore would find it, before anything stops.
func TestVerifyChecksWholeFiles(t *testing.T) {
	dir := t.TempDir()
	repo, err := backup.InitRepository(t.Context(), dir, false)
	if err != nil {
		t.Fatal(err)
	}
	m := take(t, repo, nil, fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": random(3, snapshotapi.PieceSize+10)})))
	if _, err := repo.Verify(t.Context(), m.ID, nil); err != nil {
		t.Fatalf("a sound backup: %v", err)
	}
	path := filepath.Join(dir, "backups", m.ID+".json")
	sound, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*snapshotapi.File){
		"size":        func(f *snapshotapi.File) { f.Size++ },
		"SHA-256":     func(f *snapshotapi.File) { f.SHA256 = strings.Repeat("0", 64) },
		"no SHA-256":  func(f *snapshotapi.File) { f.SHA256 = "" },
		"unsafe path": func(f *snapshotapi.File) { f.Path = "../chain.db" },
	} {
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(sound, &doc); err != nil {
			t.Fatal(err)
		}
		var services []snapshotapi.Manifest
		if err := json.Unmarshal(doc["services"], &services); err != nil {
			t.Fatalf("the manifest's services: %v", err)
		}
		edit(&services[0].Files[0])
		doc["services"], _ = json.Marshal(services)
		b, _ := json.Marshal(doc)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := repo.Verify(t.Context(), m.ID, nil)
		if !errors.Is(err, backup.ErrCorrupt) || len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0], "chain.db") {
			t.Errorf("a manifest whose file's %s is not its pieces': %v %+v", name, err, rep)
		}
	}
}
