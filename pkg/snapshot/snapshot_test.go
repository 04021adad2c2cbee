package snapshot_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/api"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
	"github.com/pickme/lucid/pkg/snapshot"
)

// fixture is a service whose state is a bbolt database and an append-only
// log that grows after each copy, as a pack does.
type fixture struct {
	t       *testing.T
	dataDir string
	db      *bolt.DB
	log     string // the live append-only file
	logData []byte
	now     time.Time
	srv     *snapshot.Server
	http    *httptest.Server
	client  *snapshotapi.Client
	// hold, when set, blocks a take until closed; entered is told when a
	// take has begun.
	hold, entered chan struct{}
	mu            sync.Mutex
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed + i/4096)
	}
	return b
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, dataDir: t.TempDir(), now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	var err error
	if f.db, err = bolt.Open(filepath.Join(f.dataDir, "state.db"), 0o600, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.db.Close() })
	if err := f.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("items"))
		if err != nil {
			return err
		}
		return b.Put([]byte("a"), []byte("1"))
	}); err != nil {
		t.Fatal(err)
	}
	f.log = filepath.Join(f.dataDir, "log", "log-1.dat")
	if err := os.MkdirAll(filepath.Dir(f.log), 0o700); err != nil {
		t.Fatal(err)
	}
	f.appendLog(pattern(snapshotapi.PieceSize*2+12345, 1))
	f.start()
	return f
}

func (f *fixture) appendLog(b []byte) {
	lf, err := os.OpenFile(f.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := lf.Write(b); err != nil {
		f.t.Fatal(err)
	}
	if err := lf.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.logData = append(f.logData, b...)
	f.mu.Unlock()
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// take links the log (served up to its length now) and copies the db.
func (f *fixture) take(ctx context.Context, dir string) (*snapshot.Copy, error) {
	if f.hold != nil {
		f.entered <- struct{}{}
		select {
		case <-f.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	n := int64(len(f.logData))
	f.mu.Unlock()
	if err := os.MkdirAll(filepath.Join(dir, "log"), 0o700); err != nil {
		return nil, err
	}
	if err := os.Link(f.log, filepath.Join(dir, "log", "log-1.dat")); err != nil {
		return nil, err
	}
	var items int
	err := snapshot.CopyBolt(f.db, filepath.Join(dir, "state.db"), func(tx *bolt.Tx) error {
		items = tx.Bucket([]byte("items")).Stats().KeyN
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &snapshot.Copy{
		Facts:      snapshotapi.Facts{Blocks: &snapshotapi.BlocksFacts{IndexedHeight: uint64(items)}},
		Lengths:    map[string]int64{"log/log-1.dat": n},
		AppendOnly: map[string]bool{"log/log-1.dat": true},
	}, nil
}

// start (re)starts the service over the same data directory.
func (f *fixture) start() {
	if f.http != nil {
		f.http.Close()
	}
	srv := service.New(servicetest.Config("blocks", f.dataDir), slog.New(slog.DiscardHandler))
	var err error
	f.srv, err = snapshot.New(snapshot.Options{Service: "blocks", DataDir: f.dataDir, Take: f.take, Now: f.clock})
	if err != nil {
		f.t.Fatal(err)
	}
	f.srv.Routes(srv)
	f.http = httptest.NewServer(srv.Handler())
	f.t.Cleanup(f.http.Close)
	f.client = snapshotapi.New(f.http.URL, servicetest.Operator())
}

func (f *fixture) read(id, path string, off, n int64) ([]byte, error) {
	rc, err := f.client.Read(context.Background(), id, path, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkFile checks a manifest entry against the bytes it stands for, and
// that the service serves exactly those bytes.
func (f *fixture) checkFile(m *snapshotapi.Manifest, path string, want []byte) {
	f.t.Helper()
	var file *snapshotapi.File
	for i := range m.Files {
		if m.Files[i].Path == path {
			file = &m.Files[i]
		}
	}
	if file == nil {
		f.t.Fatalf("%s is not in the manifest %+v", path, m.Files)
	}
	if file.Size != int64(len(want)) || file.SHA256 != sha(want) || file.Mode != 0o600 {
		f.t.Fatalf("%s: size %d sha %s mode %o; want %d %s 600", path, file.Size, file.SHA256, file.Mode, len(want), sha(want))
	}
	var pieces []string
	for off := 0; off < len(want); off += snapshotapi.PieceSize {
		pieces = append(pieces, sha(want[off:min(off+snapshotapi.PieceSize, len(want))]))
	}
	if len(pieces) != len(file.Pieces) {
		f.t.Fatalf("%s: %d pieces, want %d", path, len(file.Pieces), len(pieces))
	}
	for i := range pieces {
		if pieces[i] != file.Pieces[i] {
			f.t.Fatalf("%s: piece %d is %s, want %s", path, i, file.Pieces[i], pieces[i])
		}
	}
	got, err := f.read(m.ID, path, 0, file.Size)
	if err != nil || !bytes.Equal(got, want) {
		f.t.Fatalf("%s read back: %d bytes, equal %v, %v", path, len(got), bytes.Equal(got, want), err)
	}
}

func status(t *testing.T, err error) int {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("want an error answer, got %v", err)
	}
	return ae.Status
}

func TestTakeListReadDrop(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	m, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.Service != "blocks" || m.PieceSize != snapshotapi.PieceSize || !m.TakenAt.Equal(f.clock()) || m.Facts.Blocks == nil || m.Facts.Blocks.IndexedHeight != 1 {
		t.Fatalf("manifest = %+v", m)
	}
	if len(m.Files) != 2 || m.Files[0].Path != "log/log-1.dat" || m.Files[1].Path != "state.db" {
		t.Fatalf("files = %+v", m.Files)
	}
	logAtCopy := append([]byte(nil), f.logData...)
	// The log grows after the copy: the copy still stands for its length.
	f.appendLog(pattern(5000, 2))
	f.checkFile(m, "log/log-1.dat", logAtCopy)
	db, err := os.ReadFile(filepath.Join(f.dataDir, snapshotapi.SnapshotDir, m.ID, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkFile(m, "state.db", db)

	// Ranges: inside, the empty one at the end, and beyond.
	got, err := f.read(m.ID, "log/log-1.dat", snapshotapi.PieceSize-3, 10)
	if err != nil || !bytes.Equal(got, logAtCopy[snapshotapi.PieceSize-3:snapshotapi.PieceSize+7]) {
		t.Fatalf("range read: %v", err)
	}
	if got, err := f.read(m.ID, "log/log-1.dat", int64(len(logAtCopy)), 0); err != nil || len(got) != 0 {
		t.Fatalf("empty range at the end: %d bytes, %v", len(got), err)
	}
	for _, r := range [][2]int64{{int64(len(logAtCopy)) - 1, 2}, {int64(len(logAtCopy)) + 1, 0}} {
		if _, err := f.read(m.ID, "log/log-1.dat", r[0], r[1]); status(t, err) != http.StatusRequestedRangeNotSatisfiable {
			t.Fatalf("range %v: %v", r, err)
		}
	}
	// Anything but the copy's own files is not found.
	for _, p := range []string{"../state.db", "../../" + filepath.Base(f.dataDir) + "/state.db", "nope", "log", "/etc/passwd"} {
		if _, err := f.read(m.ID, p, 0, 1); status(t, err) != http.StatusNotFound {
			t.Errorf("read %q: %v", p, err)
		}
	}
	// The server cleans a path before routing: one that stays inside the
	// copy is the file it names there.
	if got, err := f.read(m.ID, "log/../state.db", 0, 16); err != nil || !bytes.Equal(got, db[:16]) {
		t.Errorf("read log/../state.db: %v", err)
	}
	if _, err := f.read("20261205T120000Z-00000000", "state.db", 0, 1); status(t, err) != http.StatusNotFound {
		t.Errorf("unknown id: %v", err)
	}
	// A raw request with dots the client would not send.
	resp, err := servicetest.Operator().Get(f.http.URL + "/api/v1/snapshots/" + m.ID + "/files/log/%2e%2e/%2e%2e/state.db?offset=0&length=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("an escaping path was served")
	}

	if err := f.client.Drop(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(f.dataDir, snapshotapi.SnapshotDir, m.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the copy is still there: %v", err)
	}
	if _, err := f.read(m.ID, "state.db", 0, 1); status(t, err) != http.StatusNotFound {
		t.Errorf("read after drop: %v", err)
	}
	if err := f.client.Drop(ctx, m.ID); status(t, err) != http.StatusNotFound {
		t.Errorf("second drop: %v", err)
	}
	// The live files were only linked: they are intact.
	if live, _ := os.ReadFile(f.log); !bytes.Equal(live, f.logData) {
		t.Fatal("dropping the copy changed the live log")
	}
}

func TestOnlyTheOperator(t *testing.T) {
	f := newFixture(t)
	m, err := f.client.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for name, hc := range map[string]*http.Client{"nobody": http.DefaultClient, "a service": servicetest.Client("gateway"), "a user": servicetest.User("alice")} {
		c := snapshotapi.New(f.http.URL, hc)
		if _, err := c.Take(context.Background()); status(t, err) != http.StatusForbidden && status(t, err) != http.StatusUnauthorized {
			t.Errorf("%s took a snapshot: %v", name, err)
		}
		if _, err := c.Read(context.Background(), m.ID, "state.db", 0, 1); err == nil {
			t.Errorf("%s read a snapshot", name)
		}
		if err := c.Drop(context.Background(), m.ID); err == nil {
			t.Errorf("%s dropped a snapshot", name)
		}
	}
	if len(f.srv.IDs()) != 1 {
		t.Fatalf("copies = %v", f.srv.IDs())
	}
}

func TestOneAtATime(t *testing.T) {
	f := newFixture(t)
	f.hold, f.entered = make(chan struct{}), make(chan struct{}, 1)
	first := make(chan error, 1)
	go func() {
		_, err := f.client.Take(context.Background())
		first <- err
	}()
	<-f.entered
	// The second is refused while the first is under way; once it is done
	// a new one goes through.
	if _, err := f.srv.Take(context.Background()); !errors.Is(err, snapshot.ErrBusy) {
		t.Fatalf("second take: %v", err)
	}
	if _, err := f.client.Take(context.Background()); status(t, err) != http.StatusConflict {
		t.Fatalf("concurrent take over HTTP: %v", err)
	}
	close(f.hold)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.Take(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestExpiry(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	old, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A copy a crash interrupted: a directory with no manifest.
	stray := filepath.Join(f.dataDir, snapshotapi.SnapshotDir, "20261205T115959Z-deadbeef")
	if err := os.MkdirAll(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(stray, f.clock(), f.clock()); err != nil {
		t.Fatal(err)
	}
	f.advance(snapshotapi.MaxAge / 2)
	young, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.srv.IDs()) != 2 {
		t.Fatalf("copies = %v", f.srv.IDs())
	}
	// Past MaxAge for the first: a new take removes it, not the second.
	f.advance(snapshotapi.MaxAge/2 + time.Second)
	third, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids := f.srv.IDs(); len(ids) != 2 || ids[0] != young.ID || ids[1] != third.ID {
		t.Fatalf("copies after expiry = %v (old %s)", ids, old.ID)
	}
	for _, gone := range []string{filepath.Join(f.dataDir, snapshotapi.SnapshotDir, old.ID), filepath.Join(f.dataDir, snapshotapi.SnapshotDir, old.ID+".json"), stray} {
		if _, err := os.Stat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there", gone)
		}
	}
	// A restart keeps what is young and serves it, and expires the rest
	// on start.
	f.start()
	if ids := f.srv.IDs(); len(ids) != 2 {
		t.Fatalf("copies after restart = %v", ids)
	}
	if _, err := f.read(third.ID, "state.db", 0, 10); err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	f.advance(snapshotapi.MaxAge + time.Second)
	f.start()
	if ids := f.srv.IDs(); len(ids) != 0 {
		t.Fatalf("copies after a restart past their age = %v", ids)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.dataDir, snapshotapi.SnapshotDir)); len(entries) != 0 {
		t.Fatalf("left in the snapshot directory: %v", entries)
	}
}

// A second copy of a grown append-only file goes on from the hashes of the
// first, and still describes its bytes exactly.
func TestGrownFileHashes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	first, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.appendLog(pattern(snapshotapi.PieceSize+99, 3))
	second, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.checkFile(second, "log/log-1.dat", f.logData)
	if first.Files[0].Pieces[0] != second.Files[0].Pieces[0] || first.Files[0].Pieces[1] != second.Files[0].Pieces[1] {
		t.Fatal("the whole pieces before the growth changed")
	}
	// Unchanged: the same hashes again.
	third, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if third.Files[0].SHA256 != second.Files[0].SHA256 {
		t.Fatal("an unchanged file hashed differently")
	}
	// A file rewritten in place (the bbolt copy is new each time) is
	// hashed again.
	if err := f.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("items")).Put([]byte("b"), bytes.Repeat([]byte("x"), 10000))
	}); err != nil {
		t.Fatal(err)
	}
	fourth, err := f.client.Take(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(filepath.Join(f.dataDir, snapshotapi.SnapshotDir, fourth.ID, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	f.checkFile(fourth, "state.db", db)
	if fourth.Facts.Blocks.IndexedHeight != 2 {
		t.Fatalf("facts = %+v", fourth.Facts.Blocks)
	}
}
