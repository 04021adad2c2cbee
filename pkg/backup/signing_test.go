package backup_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
)

// TestForgedBackupIsRefused: someone who can write to the backup disk and
// knows a recipient's public key (it is in lucid.yaml), but not the
// operator's signing key, writes a backup of their own (an env file with
// their JWT_SECRET_KEY) that sorts as the newest, and one moved under a
// newer id. A repository that trusts the operator's key takes neither: the
// latest is the operator's backup, and loading the others fails.
func TestForgedBackupIsRefused(t *testing.T) {
	id := identity(t)
	dir := t.TempDir()
	repo, err := backup.InitRepository(t.Context(), dir, true)
	if err != nil {
		t.Fatal(err)
	}
	key, err := backup.SigningKey("operator-token-for-tests")
	if err != nil {
		t.Fatal(err)
	}
	svc := fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": random(1, 1000)}))
	good, err := repo.Backup(t.Context(), backup.BeginOptions{Target: "pi", Recipients: []age.Recipient{id.Recipient()}, Signer: key},
		[]backup.Snapshotter{svc}, []backup.EnvFile{{Name: "engine.env", Mode: 0o600, Data: []byte(secretEnv)}}, backup.Events{})
	if err != nil {
		t.Fatal(err)
	}

	// The forger's side: the public recipient alone.
	pub, err := age.ParseX25519Recipient(id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	seal := func(b []byte) []byte {
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, pub)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	write := func(p string, b []byte) {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	evil := []byte("JWT_SECRET_KEY=attacker-chosen-secret\n")
	s := sha256.Sum256(evil)
	sum := hex.EncodeToString(s[:])
	write(filepath.Join(dir, "blobs", sum[:2], sum), seal(evil))
	forged := time.Now().Add(time.Hour).UTC().Format("20060102T150405.000000Z") + "-abcdef"
	m := backup.Manifest{Format: backup.ManifestFormat, ID: forged, Target: "pi", StartedAt: time.Now(), FinishedAt: time.Now(),
		Env: []snapshotapi.File{{Path: "engine.env", Size: int64(len(evil)), Mode: 0o600, SHA256: sum, Pieces: []string{sum}}}}
	mj, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dir, "backups", forged+".age"), seal(mj))
	// And the operator's own manifest and signature, copied under a newer id.
	moved := time.Now().Add(2*time.Hour).UTC().Format("20060102T150405.000000Z") + "-fedcba"
	for _, suffix := range []string{".age", ".sig"} {
		b, err := os.ReadFile(filepath.Join(dir, "backups", good.ID+suffix))
		if err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(dir, "backups", moved+suffix), b)
	}

	// Without trust (as before signatures), the forgery passes for the newest.
	if latest, err := repo.Latest(t.Context()); err != nil || latest.ID == good.ID {
		t.Fatalf("without trust: latest %s, %v; the test's forgeries are not newer", latest.ID, err)
	}

	signatures := func(want map[string]backup.Signature) {
		t.Helper()
		for id, w := range want {
			if got := repo.SignatureOf(id); got != w {
				t.Errorf("signature of %s: %q, want %q", id, got, w)
			}
		}
	}
	signatures(map[string]backup.Signature{good.ID: backup.SignatureUnchecked, forged: backup.SignatureNone, moved: backup.SignatureUnchecked})

	repo.Trust([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	signatures(map[string]backup.Signature{good.ID: backup.SignatureTrusted, forged: backup.SignatureNone, moved: backup.SignatureUntrusted})
	// A signature that cannot be read is said to be so, not a forgery.
	if err := os.Mkdir(filepath.Join(dir, "backups", forged+".sig"), 0o700); err != nil {
		t.Fatal(err)
	}
	signatures(map[string]backup.Signature{forged: backup.SignatureUnreadable})
	if err := os.Remove(filepath.Join(dir, "backups", forged+".sig")); err != nil {
		t.Fatal(err)
	}
	latest, err := repo.Latest(t.Context())
	if err != nil || latest.ID != good.ID {
		t.Fatalf("latest %s, %v; want the operator's backup %s", latest.ID, err, good.ID)
	}
	for _, bad := range []string{forged, moved} {
		if _, err := repo.Load(t.Context(), bad, []age.Identity{id}); !errors.Is(err, backup.ErrUnsigned) {
			t.Errorf("load %s: %v, want %v", bad, err, backup.ErrUnsigned)
		}
	}
	if _, err := repo.Verify(t.Context(), good.ID, []age.Identity{id}); err != nil {
		t.Errorf("verify the operator's backup: %v", err)
	}
	// Trusting no key but preferring the operator's (--allow-unsigned):
	// every backup loads, and the newest is still the operator's, not
	// the newer unsigned or foreign-signed ones.
	repo.Trust(nil)
	repo.Prefer([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	if latest, err := repo.Latest(t.Context()); err != nil || latest.ID != good.ID {
		t.Errorf("preferring the operator's key: latest %s, %v; want %s", latest.ID, err, good.ID)
	}
	if _, err := repo.Load(t.Context(), forged, []age.Identity{id}); err != nil {
		t.Errorf("load of an unsigned backup, trusting no key: %v", err)
	}
	repo.Prefer(nil)
	repo.Trust([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	// With none of its backups signed by a trusted key, there is no
	// latest, and the error says why.
	lone, err := backup.InitRepository(t.Context(), t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lone.Backup(t.Context(), backup.BeginOptions{Target: "pi"}, []backup.Snapshotter{fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": random(3, 100)}))}, nil, backup.Events{}); err != nil {
		t.Fatal(err)
	}
	lone.Prefer([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	if _, err := lone.Latest(t.Context()); err != nil {
		t.Errorf("latest of unsigned backups only, preferring a key: %v, want the newest", err)
	}
	lone.Prefer(nil)
	lone.Trust([]ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	if _, err := lone.Latest(t.Context()); !errors.Is(err, backup.ErrUnsigned) {
		t.Errorf("latest of unsigned backups only: %v, want %v", err, backup.ErrUnsigned)
	}
	// A key it does not trust signs nothing it takes.
	other, err := backup.SigningKey("another-token")
	if err != nil {
		t.Fatal(err)
	}
	repo.Trust([]ed25519.PublicKey{other.Public().(ed25519.PublicKey)})
	if _, err := repo.Load(t.Context(), good.ID, []age.Identity{id}); !errors.Is(err, backup.ErrUnsigned) {
		t.Errorf("load with another key trusted: %v, want %v", err, backup.ErrUnsigned)
	}
}

func TestSigners(t *testing.T) {
	key, err := backup.SigningKey("operator-token-for-tests")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := backup.SigningKey("operator-token-for-tests")
	if !bytes.Equal(key, again) {
		t.Error("the signing key is not derived the same way twice")
	}
	pub, err := backup.ParseSigner(backup.SignerOf(key))
	if err != nil || !bytes.Equal(pub, key.Public().(ed25519.PublicKey)) {
		t.Errorf("SignerOf does not parse back: %v", err)
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:AAAA", "ssh-ed25519 AAAA", "age1qqq"} {
		if _, err := backup.ParseSigner(bad); err == nil {
			t.Errorf("%q parsed as a signer", bad)
		}
	}
}
