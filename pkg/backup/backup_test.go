package backup_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/backup"
	"github.com/pickme/lucid/pkg/backup/backuptest"
)

const token = "operator-token"

// fake runs svc behind an httptest server and returns its client.
func fake(t testing.TB, svc *backuptest.Service) *snapshotapi.Client {
	t.Helper()
	svc.Token, svc.Host = token, "pi"
	srv := httptest.NewServer(svc)
	t.Cleanup(srv.Close)
	return snapshotapi.New(srv.URL, &http.Client{Transport: bearer{auth.OperatorCredential(token, svc.Name, svc.Host)}})
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// random is n bytes that do not compress and are not guessable.
func random(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func identity(t testing.TB) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

const secretEnv = "JWT_SECRET_KEY=very-secret-value-0123456789\n"

func take(t testing.TB, repo *backup.Repository, ids []age.Recipient, svcs ...*snapshotapi.Client) *backup.Manifest {
	t.Helper()
	var src []backup.Snapshotter
	for _, s := range svcs {
		src = append(src, s)
	}
	m, err := repo.Backup(t.Context(), backup.BeginOptions{Target: "pi", Host: "pi.local", Recipients: ids}, src,
		[]backup.EnvFile{{Name: "engine.env", Mode: 0o600, Data: []byte(secretEnv)}}, backup.Events{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func read(t *testing.T, repo *backup.Repository, b *backup.Backup, service, path string, ids []age.Identity) ([]byte, error) {
	t.Helper()
	rc, err := repo.Open(t.Context(), b, service, path, ids)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestBackupIsIncrementalEncryptedAndRestorable(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	id := identity(t)
	rcpt := []age.Recipient{id.Recipient()}
	ids := []age.Identity{id}
	pack := random(1, 3*snapshotapi.PieceSize+12345)
	db := random(2, 2*snapshotapi.PieceSize)
	engine := backuptest.NewService("engine", map[string][]byte{"chain.db": db})
	engine.Facts.Chain = &snapshotapi.ChainFacts{ChainID: "c", Height: 42, Root: "cm9vdA=="}
	dc := backuptest.NewService("datachain", map[string][]byte{"packs/000001.pack": pack, "index.db": []byte("small index")})
	ec, dcc := fake(t, engine), fake(t, dc)

	repo, err := backup.InitRepository(ctx, dir, true)
	if err != nil {
		t.Fatal(err)
	}
	first := take(t, repo, rcpt, ec, dcc)
	if first.Totals.BytesSent != first.Totals.Bytes-int64(len(secretEnv)) || first.Totals.PiecesReused != 0 {
		t.Fatalf("first backup: %+v", first.Totals)
	}
	if engine.Live() != 0 || dc.Live() != 0 {
		t.Fatal("the services' copies were not dropped")
	}

	// One page of the database changes, the pack grows: only the changed
	// piece and the pack's last piece are sent again.
	db2 := bytes.Clone(db)
	db2[snapshotapi.PieceSize+10] ^= 0xff
	engine.Set("chain.db", db2)
	pack2 := append(bytes.Clone(pack), random(3, 1000)...)
	dc.Set("packs/000001.pack", pack2)
	_, before := dc.Reads()
	second := take(t, repo, rcpt, ec, dcc)
	if second.Totals.PiecesNew != 2 {
		t.Fatalf("second backup stored %d new pieces, want 2: %+v", second.Totals.PiecesNew, second.Totals)
	}
	_, after := dc.Reads()
	if sent := after - before; sent != int64(12345+1000) {
		t.Fatalf("the data chain sent %d bytes again, want only the grown last piece", sent)
	}
	if want := int64(snapshotapi.PieceSize + 12345 + 1000); second.Totals.BytesSent != want {
		t.Fatalf("bytes sent %d, want %d", second.Totals.BytesSent, want)
	}

	latest, err := repo.Latest(ctx)
	if err != nil || latest.ID != second.ID || latest.Target != "pi" || latest.Totals == nil {
		t.Fatalf("latest: %+v, %v", latest, err)
	}
	for _, c := range []struct {
		id, service, path string
		want              []byte
	}{
		{first.ID, "engine", "chain.db", db},
		{second.ID, "engine", "chain.db", db2},
		{first.ID, "datachain", "packs/000001.pack", pack},
		{second.ID, "datachain", "packs/000001.pack", pack2},
		{second.ID, backup.EnvService, "engine.env", []byte(secretEnv)},
	} {
		b, err := repo.Load(ctx, c.id, ids)
		if err != nil {
			t.Fatal(err)
		}
		got, err := read(t, repo, b, c.service, c.path, ids)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("%s %s of %s: %d bytes, %v", c.service, c.path, c.id, len(got), err)
		}
	}
	b, _ := repo.Load(ctx, second.ID, ids)
	if m, _ := b.Service("engine"); m.Facts.Chain == nil || m.Facts.Chain.Height != 42 {
		t.Fatalf("facts lost: %+v", m)
	}
	if _, err := repo.Verify(ctx, second.ID, ids); err != nil {
		t.Fatal(err)
	}

	// Nothing in the repository holds the plaintext: not the secret, not a
	// piece of the data.
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("very-secret-value")) || bytes.Contains(b, db[:64]) || bytes.Contains(b, pack[:64]) || bytes.Contains(b, []byte("small index")) {
			t.Errorf("%s holds plaintext", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestWrongIdentityFailsClearly(t *testing.T) {
	ctx := t.Context()
	repo, err := backup.InitRepository(ctx, t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	m := take(t, repo, []age.Recipient{identity(t).Recipient()}, fake(t, backuptest.NewService("engine", map[string][]byte{"a": []byte("x")})))
	_, err = repo.Load(ctx, m.ID, []age.Identity{identity(t)})
	if !errors.Is(err, backup.ErrWrongIdentity) {
		t.Fatalf("Load with another identity: %v", err)
	}
	if _, err := repo.Verify(ctx, m.ID, []age.Identity{identity(t)}); !errors.Is(err, backup.ErrWrongIdentity) {
		t.Fatalf("Verify with another identity: %v", err)
	}
}

func TestCorruptBlobIsDetected(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run(map[bool]string{true: "encrypted", false: "plaintext"}[encrypted], func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			repo, err := backup.InitRepository(ctx, dir, encrypted)
			if err != nil {
				t.Fatal(err)
			}
			id := identity(t)
			var rcpt []age.Recipient
			if encrypted {
				rcpt = []age.Recipient{id.Recipient()}
			}
			data := random(4, snapshotapi.PieceSize+10)
			m := take(t, repo, rcpt, fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": data})))
			ids := []age.Identity{id}
			b, err := repo.Load(ctx, m.ID, ids)
			if err != nil {
				t.Fatal(err)
			}
			f, _ := b.File("engine", "chain.db")
			blob := filepath.Join(dir, "blobs", f.Pieces[1][:2], f.Pieces[1])
			raw, err := os.ReadFile(blob)
			if err != nil {
				t.Fatal(err)
			}
			raw[len(raw)-3] ^= 1
			if err := os.WriteFile(blob, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := read(t, repo, b, "engine", "chain.db", ids); !errors.Is(err, backup.ErrCorrupt) {
				t.Fatalf("Open of a corrupt file: %v", err)
			}
			rep, err := repo.Verify(ctx, m.ID, ids)
			if !errors.Is(err, backup.ErrCorrupt) || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], f.Pieces[1]) {
				t.Fatalf("Verify: %+v, %v", rep, err)
			}
			if err := os.Remove(blob); err != nil {
				t.Fatal(err)
			}
			if rep, err := repo.Verify(ctx, m.ID, ids); !errors.Is(err, backup.ErrCorrupt) || !strings.Contains(rep.Problems[0], "missing") {
				t.Fatalf("Verify of a missing blob: %+v, %v", rep, err)
			}
		})
	}
}

func TestRepositoryIsNeverMixed(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	if _, err := backup.InitRepository(ctx, dir, false); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.InitRepository(ctx, dir, true); !errors.Is(err, backup.ErrMixed) {
		t.Fatalf("encrypted into a plaintext repository: %v", err)
	}
	repo, err := backup.OpenRepository(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Begin(ctx, backup.BeginOptions{Recipients: []age.Recipient{identity(t).Recipient()}}); !errors.Is(err, backup.ErrMixed) {
		t.Fatalf("recipients into a plaintext repository: %v", err)
	}
	enc, err := backup.InitRepository(ctx, t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Begin(ctx, backup.BeginOptions{}); !errors.Is(err, backup.ErrMixed) {
		t.Fatalf("no recipients into an encrypted repository: %v", err)
	}
	if _, err := backup.OpenRepository(ctx, t.TempDir()); !errors.Is(err, backup.ErrNotRepository) {
		t.Fatalf("an empty directory: %v", err)
	}
}

func TestPartialBackupIsNeverLatestAndItsBlobsAreReused(t *testing.T) {
	ctx := t.Context()
	repo, err := backup.InitRepository(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	data := random(5, 4*snapshotapi.PieceSize)
	svc := backuptest.NewService("engine", map[string][]byte{"chain.db": data})
	c := fake(t, svc)
	first := take(t, repo, nil, c)

	// A backup that fails halfway: the link drops after two pieces.
	svc.Set("chain.db", random(6, 4*snapshotapi.PieceSize))
	svc.OnRead = func(r *http.Request, n int) {
		if n > 4+2 {
			panic(http.ErrAbortHandler)
		}
	}
	_, err = repo.Backup(ctx, backup.BeginOptions{Parallel: 1}, []backup.Snapshotter{c}, nil, backup.Events{})
	if err == nil {
		t.Fatal("a backup whose link dropped succeeded")
	}
	if svc.Live() != 0 {
		t.Fatal("the failed backup's copy was not dropped")
	}
	all, err := repo.Backups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Partial || !all[1].Partial {
		t.Fatalf("backups: %+v", all)
	}
	if latest, err := repo.Latest(ctx); err != nil || latest.ID != first.ID {
		t.Fatalf("latest: %+v, %v", latest, err)
	}
	if _, err := repo.Load(ctx, all[1].ID, nil); !errors.Is(err, backup.ErrNoBackup) {
		t.Fatalf("Load of a partial backup: %v", err)
	}

	svc.OnRead = nil
	third := take(t, repo, nil, c)
	if third.Totals.PiecesNew != 2 || third.Totals.BytesSent != 2*snapshotapi.PieceSize {
		t.Fatalf("the next backup did not reuse the partial one's pieces: %+v", third.Totals)
	}
}

// BenchmarkBackup backs up 256 MiB from a fake service over HTTP into an
// encrypted repository: full (a fresh repository each time) and
// incremental (nothing changed since the last backup). MB/s is of the
// data covered by the backup.
func BenchmarkBackup(b *testing.B) {
	const size = 256 << 20
	files := map[string][]byte{}
	for i := range 8 {
		files["packs/"+strconv.Itoa(i)+".pack"] = random(uint64(100+i), size/8)
	}
	c := fake(b, backuptest.NewService("datachain", files))
	rcpt := []age.Recipient{identity(b).Recipient()}
	run := func(b *testing.B, repo *backup.Repository) *backup.Manifest {
		m, err := repo.Backup(b.Context(), backup.BeginOptions{Recipients: rcpt, Parallel: 4}, []backup.Snapshotter{c}, nil, backup.Events{})
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	b.Run("full", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			repo, err := backup.InitRepository(b.Context(), b.TempDir(), true)
			if err != nil {
				b.Fatal(err)
			}
			if m := run(b, repo); m.Totals.BytesSent != size {
				b.Fatalf("sent %d", m.Totals.BytesSent)
			}
		}
	})
	b.Run("incremental", func(b *testing.B) {
		repo, err := backup.InitRepository(b.Context(), b.TempDir(), true)
		if err != nil {
			b.Fatal(err)
		}
		run(b, repo)
		b.SetBytes(size)
		for b.Loop() {
			if m := run(b, repo); m.Totals.BytesSent != 0 {
				b.Fatalf("sent %d", m.Totals.BytesSent)
			}
		}
	})
}

func TestReadIdentities(t *testing.T) {
	dir := t.TempDir()
	id := identity(t)
	p := filepath.Join(dir, "backup.key")
	if err := os.WriteFile(p, []byte("# created: now\n"+id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ids, err := backup.ReadIdentities(p)
	if err != nil || len(ids) != 1 {
		t.Fatalf("age identity file: %v", err)
	}
	r, err := backup.ParseRecipient(id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}
	// An encrypted repository written for r opens with the file's identity.
	repo, err := backup.InitRepository(t.Context(), filepath.Join(dir, "repo"), true)
	if err != nil {
		t.Fatal(err)
	}
	m := take(t, repo, []age.Recipient{r}, fake(t, backuptest.NewService("mesh", map[string][]byte{"ca.db": []byte("ca")})))
	if _, err := repo.Verify(t.Context(), m.ID, ids); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.ReadIdentities(filepath.Join(dir, "missing.key")); err == nil {
		t.Fatal("a missing identity file read")
	}
}

func TestSSHRecipient(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "op@laptop")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := backup.ParseRecipient(string(ssh.MarshalAuthorizedKey(sshPub)))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := backup.ReadIdentities(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := backup.InitRepository(t.Context(), filepath.Join(dir, "repo"), true)
	if err != nil {
		t.Fatal(err)
	}
	m := take(t, repo, []age.Recipient{r}, fake(t, backuptest.NewService("mesh", map[string][]byte{"ca.db": []byte("ca")})))
	if _, err := repo.Verify(t.Context(), m.ID, ids); err != nil {
		t.Fatal(err)
	}
}

// TestLatestOfATarget: one repository holds several hosts' backups;
// LatestOf gives the newest of the one asked for, whoever backed up last,
// and says when that host has none.
func TestLatestOfATarget(t *testing.T) {
	ctx := t.Context()
	repo, err := backup.InitRepository(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	c := fake(t, backuptest.NewService("engine", map[string][]byte{"chain.db": random(7, 1024)}))
	ofHost := func(target string) *backup.Manifest {
		m, err := repo.Backup(ctx, backup.BeginOptions{Target: target, Host: target + ".local"}, []backup.Snapshotter{c}, nil, backup.Events{})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	pi2 := ofHost("pi2")
	pi3 := ofHost("pi3")
	if latest, err := repo.LatestOf(ctx, "pi2"); err != nil || latest.ID != pi2.ID {
		t.Errorf("the newest of pi2: %+v %v, want %s (pi3's %s is newer)", latest, err, pi2.ID, pi3.ID)
	}
	if latest, err := repo.Latest(ctx); err != nil || latest.ID != pi3.ID {
		t.Errorf("the newest of any: %+v %v, want %s", latest, err, pi3.ID)
	}
	if _, err := repo.LatestOf(ctx, "pi4"); !errors.Is(err, backup.ErrNoBackup) || !strings.Contains(err.Error(), "of pi4") {
		t.Errorf("the newest of a host never backed up: %v", err)
	}
	// A backup whose summary is lost does not hide: its target is
	// unknown, and the caller holds its manifest's against the one asked.
	if err := os.Remove(filepath.Join(repo.Dir(), "backups", pi3.ID+".info.json")); err != nil {
		t.Fatal(err)
	}
	if latest, err := repo.LatestOf(ctx, "pi2"); err != nil || latest.ID != pi3.ID || latest.Target != "" {
		t.Errorf("the newest of pi2 with pi3's summary lost: %+v %v, want %s of no known target", latest, err, pi3.ID)
	}
}
