package packstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// owner is the principal the tests store as.
const owner = "alice@example.org"

func chunk(i, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	copy(b, fmt.Sprintf("chunk-%d-", i))
	return b
}

func openT(t *testing.T, dir string, key []byte) *Store {
	t.Helper()
	s, err := Open(Options{Dir: dir, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// closeT closes c and reports a failure: a store or pack file that does
// not close cleanly may have lost what the test wrote.
func closeT(tb testing.TB, c io.Closer) {
	tb.Helper()
	if err := c.Close(); err != nil {
		tb.Errorf("close: %v", err)
	}
}

func TestPutGetDedupSessions(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make([]string, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := s.Put(ctx, owner, chunk(i, 4096), &Member{Session: "s1", Index: uint64(19 - i)})
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	// The same bytes again are stored once.
	if _, err := s.Put(ctx, owner, chunk(3, 4096), nil); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats()
	if st.Chunks != 20 || st.PackBytes != 20*(headerSize+4096) {
		t.Errorf("stats = %+v", st)
	}
	sess, order, err := s.SessionChunks(owner, "s1")
	if err != nil || sess.Chunks != 20 || order[0] != ids[19] || order[19] != ids[0] {
		t.Fatalf("session = %+v %v", sess, err)
	}
	if _, err := s.Put(ctx, owner, chunk(99, 10), &Member{Session: "s1", Index: 0}); !errors.Is(err, ErrIndexTaken) {
		t.Errorf("second chunk at one index: %v", err)
	}
	if _, err := s.Seal(owner, "s1", "tx"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, owner, chunk(98, 10), &Member{Session: "s1", Index: 50}); !errors.Is(err, ErrSealed) {
		t.Errorf("chunk into a sealed session: %v", err)
	}
	if err := s.Delete(owner, ids[0]); !errors.Is(err, ErrReferenced) {
		t.Errorf("delete of a sealed session's chunk: %v", err)
	}
	closeT(t, s)

	s = openT(t, dir, nil)
	defer closeT(t, s)
	for i, id := range ids {
		got, err := s.Get(owner, id)
		if err != nil || !bytes.Equal(got, chunk(i, 4096)) {
			t.Fatalf("chunk %d after reopen: %v", i, err)
		}
	}
	free, _ := s.Put(ctx, owner, chunk(7, 100), &Member{Session: "s2", Index: 0})
	if err := s.Delete(owner, free); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Get(owner, free); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted chunk: %v", err)
	}
	if sess, ids, _ := s.SessionChunks(owner, "s2"); sess.Chunks != 0 || len(ids) != 0 {
		t.Errorf("open session still holds the deleted chunk: %+v %v", sess, ids)
	}
}

// TestTornTailIsCut: bytes written after the last committed record (a
// crash mid-batch) are cut on open, and the store goes on appending.
func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, nil)
	id, _ := s.Put(context.Background(), owner, chunk(1, 1000), nil)
	closeT(t, s)
	f, _ := os.OpenFile(s.packPath(1), os.O_APPEND|os.O_WRONLY, 0)
	_, _ = f.Write([]byte("LPK1 half a record"))
	closeT(t, f)

	s = openT(t, dir, nil)
	defer closeT(t, s)
	if fi, _ := os.Stat(s.packPath(1)); fi.Size() != headerSize+1000 {
		t.Errorf("pack is %d bytes after open; the torn tail was not cut", fi.Size())
	}
	id2, err := s.Put(context.Background(), owner, chunk(2, 1000), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{id, id2} {
		if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, chunk(i+1, 1000)) {
			t.Errorf("chunk %d: %v", i+1, err)
		}
	}
}

// TestFlippedByteIsFound: one flipped byte in a pack makes that chunk's
// read fail with ErrCorrupt (never wrong data) and shows in the scrub with
// its session.
func TestFlippedByteIsFound(t *testing.T) {
	for _, key := range [][]byte{nil, []byte("an operator secret of enough length")} {
		dir := t.TempDir()
		s := openT(t, dir, key)
		ctx := context.Background()
		a, _ := s.Put(ctx, owner, chunk(1, 2000), &Member{Session: "sess", Index: 0})
		b, _ := s.Put(ctx, owner, chunk(2, 2000), &Member{Session: "sess", Index: 1})
		loc, _ := s.Locate(owner, b)
		f, _ := os.OpenFile(s.packPath(loc.Pack), os.O_RDWR, 0)
		one := make([]byte, 1)
		_, _ = f.ReadAt(one, loc.Offset+headerSize+500)
		one[0] ^= 0x20
		_, _ = f.WriteAt(one, loc.Offset+headerSize+500)
		closeT(t, f)

		if _, err := s.Get(owner, a); err != nil {
			t.Errorf("intact chunk: %v", err)
		}
		if data, err := s.Get(owner, b); !errors.Is(err, ErrCorrupt) || data != nil {
			t.Errorf("damaged chunk: %v (data %d bytes)", err, len(data))
		}
		rep, err := s.Scrub(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Chunks != 1 || len(rep.Damaged) != 1 || rep.Damaged[0].ID != b || strings.Join(rep.Damaged[0].Sessions, ",") != "sess" {
			t.Errorf("scrub = %+v", rep)
		}
		closeT(t, s)
	}
}

func TestEncryptionAtRest(t *testing.T) {
	dir := t.TempDir()
	key := []byte("the first operator secret, long enough")
	s := openT(t, dir, key)
	secret := []byte("SESSION-PLAINTEXT-MARKER " + strings.Repeat("x", 1000))
	id, _ := s.Put(context.Background(), owner, secret, nil)
	closeT(t, s)
	pack, _ := os.ReadFile(s.packPath(1))
	if bytes.Contains(pack, []byte("SESSION-PLAINTEXT-MARKER")) {
		t.Error("plaintext found in the pack")
	}
	if _, err := Open(Options{Dir: dir, Key: []byte("another secret of the same good length")}); !errors.Is(err, ErrWrongKey) {
		t.Errorf("wrong key: %v", err)
	}
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "ENCRYPTION_KEY is required") {
		t.Errorf("no key: %v", err)
	}
	s = openT(t, dir, key)
	defer closeT(t, s)
	if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("read back: %v", err)
	}
	plain := t.TempDir()
	p := openT(t, plain, nil)
	closeT(t, p)
	if _, err := Open(Options{Dir: plain, Key: key}); err == nil || !strings.Contains(err.Error(), "created without encryption") {
		t.Errorf("key on a plain store: %v", err)
	}
}

// TestCompactReclaimsWithoutBlockingReads deletes most chunks, compacts
// while readers keep reading the survivors, and checks that no read fails,
// space comes back and everything survives a reopen.
func TestCompactReclaimsWithoutBlockingReads(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, MaxPackBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var keep []string
	for i := 0; i < 100; i++ {
		id, err := s.Put(ctx, owner, chunk(i, 4096), nil)
		if err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			keep = append(keep, id)
		} else if err := s.Delete(owner, id); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := s.Stats()

	stop := make(chan struct{})
	var readErr atomic.Value
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Get(owner, keep[i%len(keep)]); err != nil {
					readErr.Store(err)
					return
				}
			}
		}()
	}
	rep, err := s.Compact(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if e := readErr.Load(); e != nil {
		t.Fatalf("a read failed during compaction: %v", e)
	}
	after, _ := s.Stats()
	if len(rep.Packs) == 0 || after.PackBytes >= before.PackBytes || after.DeadBytes >= before.DeadBytes {
		t.Errorf("compaction %+v: pack bytes %d -> %d, dead %d -> %d", rep, before.PackBytes, after.PackBytes, before.DeadBytes, after.DeadBytes)
	}
	closeT(t, s)
	s = openT(t, dir, nil)
	defer closeT(t, s)
	for i, id := range keep {
		if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, chunk(i*5, 4096)) {
			t.Fatalf("chunk %d after compaction and reopen: %v", i*5, err)
		}
	}
}

// damage flips one payload byte of chunk id on disk.
func damage(t *testing.T, s *Store, id string) {
	t.Helper()
	loc, err := s.Locate(owner, id)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(s.packPath(loc.Pack), os.O_RDWR, 0)
	defer closeT(t, f)
	one := make([]byte, 1)
	_, _ = f.ReadAt(one, loc.Offset+headerSize+10)
	one[0] ^= 0xff
	_, _ = f.WriteAt(one, loc.Offset+headerSize+10)
}

// TestReuploadRepairsDamage: once a scrub has found a chunk damaged, an
// upload of the same bytes writes it again, and the session keeps it.
func TestReuploadRepairsDamage(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	data := chunk(5, 3000)
	id, _ := s.Put(ctx, owner, data, &Member{Session: "s", Index: 0})
	if _, err := s.Seal(owner, "s", ""); err != nil {
		t.Fatal(err)
	}
	damage(t, s, id)
	if rep, _ := s.Scrub(ctx); len(rep.Damaged) != 1 {
		t.Fatalf("scrub: %+v", rep)
	}
	// The same upload again (a retried push into the sealed session) is
	// accepted and repairs the chunk.
	if _, err := s.Put(ctx, owner, data, &Member{Session: "s", Index: 0}); err != nil {
		t.Fatalf("re-upload: %v", err)
	}
	if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after re-upload: %v", err)
	}
	if rep, _ := s.Scrub(ctx); len(rep.Damaged) != 0 {
		t.Errorf("still damaged: %+v", rep.Damaged)
	}
}

// TestReuploadRepairsDamageARead: a chunk no scrub has looked at yet is
// recorded damaged once a read finds it so (the client told, 5201, to
// upload it again), and that upload of the same bytes repairs it rather
// than be taken as a copy of what is already stored.
func TestReuploadRepairsDamageARead(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	data := chunk(5, 3000)
	id, _ := s.Put(ctx, owner, data, &Member{Session: "s1", Index: 0})
	damage(t, s, id)
	if _, err := s.Get(owner, id); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of a damaged chunk: %v", err)
	}
	if _, err := s.Put(ctx, owner, data, &Member{Session: "s2", Index: 0}); err != nil {
		t.Fatalf("re-upload: %v", err)
	}
	if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after the re-upload: %v", err)
	}
}

// TestCompactionAndScrubTogether: a scrub running while compaction moves
// chunks reports no false damage; a pack holding a damaged record is
// skipped while the others are reclaimed.
func TestCompactionAndScrubTogether(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MaxPackBytes: 32 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 120; i++ {
		id, _ := s.Put(ctx, owner, chunk(i, 4096), nil)
		ids = append(ids, id)
	}
	for i, id := range ids {
		if i%4 != 0 {
			_ = s.Delete(owner, id)
		}
	}
	damage(t, s, ids[0]) // in pack 1
	var wg sync.WaitGroup
	var scrub *ScrubReport
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5; i++ {
			scrub, _ = s.Scrub(ctx)
		}
	}()
	rep, err := s.Compact(ctx)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(scrub.Damaged) != 1 || scrub.Damaged[0].ID != ids[0] {
		t.Errorf("scrub during compaction found %+v; want only the damaged chunk", scrub.Damaged)
	}
	if len(rep.Skipped) != 1 || rep.Skipped[0] != 1 || len(rep.Packs) == 0 {
		t.Errorf("compaction = %+v; want pack 1 skipped and others reclaimed", rep)
	}
	for i := 4; i < len(ids); i += 4 {
		if _, err := s.Get(owner, ids[i]); err != nil {
			t.Fatalf("chunk %d after compaction: %v", i, err)
		}
	}
}

func TestAddReportsNewBytes(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	if _, isNew, err := s.Add(ctx, owner, chunk(1, 2000), nil); err != nil || !isNew {
		t.Errorf("first Add: new=%v %v", isNew, err)
	}
	if _, isNew, err := s.Add(ctx, owner, chunk(1, 2000), &Member{Session: "s", Index: 0}); err != nil || isNew {
		t.Errorf("second Add of the same bytes: new=%v %v", isNew, err)
	}
}

// TestOwnersAreApart: what one owner stores, the other cannot see, read,
// delete, add to or seal, and the same bytes or session id stored by both
// are two things; the empty owner's keys are the ones of a store from
// before owners (a session id, a chunk id), so such a store reads as is.
func TestOwnersAreApart(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	const sess, mallory = "11111111-2222-4333-8444-555555555555", "mallory"
	data := chunk(1, 4096)
	id, isNew, err := s.Add(ctx, owner, data, &Member{Session: sess, Index: 0})
	if err != nil || !isNew {
		t.Fatalf("alice's put: new=%v %v", isNew, err)
	}
	if _, err := s.Seal(owner, sess, "tx"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get":     func() error { _, err := s.Get(mallory, id); return err }(),
		"locate":  func() error { _, err := s.Locate(mallory, id); return err }(),
		"delete":  s.Delete(mallory, id),
		"session": func() error { _, err := s.Session(mallory, sess); return err }(),
		"seal":    func() error { _, err := s.Seal(mallory, sess, ""); return err }(),
		"chunks":  func() error { _, _, err := s.SessionChunks(mallory, sess); return err }(),
		"legacy":  func() error { _, err := s.Get("", id); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("mallory's %s of alice's: %v, want ErrNotFound", name, err)
		}
	}
	// The same bytes and session id are mallory's own: stored anew (no
	// shortcut that timing could tell apart), in an open session.
	mid, isNew, err := s.Add(ctx, mallory, data, &Member{Session: sess, Index: 0})
	if err != nil || !isNew || mid != id {
		t.Fatalf("mallory's put of the same bytes: id %s new=%v %v", mid, isNew, err)
	}
	if _, err := s.Put(ctx, mallory, chunk(2, 2048), &Member{Session: sess, Index: 1}); err != nil {
		t.Fatalf("mallory's own session took no chunk: %v", err)
	}
	if err := s.Delete(mallory, mid); err != nil {
		t.Fatalf("mallory's delete of her own chunk: %v", err)
	}
	if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("alice's chunk after mallory deleted her copy: %v", err)
	}
	st, _, err := s.SessionChunks(owner, sess)
	if err != nil || !st.Sealed || st.Owner != owner || st.Chunks != 1 {
		t.Fatalf("alice's session: %+v %v", st, err)
	}

	// Before owners: keys were the bare ids.
	lid, err := s.Put(ctx, "", chunk(3, 1500), &Member{Session: sess, Index: 0})
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketChunks).Get([]byte(lid)) == nil || tx.Bucket(bucketSessions).Get([]byte(sess)) == nil {
			return errors.New("the empty owner's keys are not the bare ids")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ids, err := s.SessionChunks("", sess); err != nil || len(ids) != 1 || ids[0] != lid {
		t.Fatalf("the ownerless session: %v %v", ids, err)
	}
}

func TestScopedKeys(t *testing.T) {
	for _, tc := range []struct{ owner, name string }{{"", "abc"}, {"alice", "abc"}, {"a b@c", "11111111-2222-4333-8444-555555555555"}} {
		if o, n := unscoped(scoped(tc.owner, tc.name)); o != tc.owner || n != tc.name {
			t.Errorf("unscoped(scoped(%q, %q)) = %q, %q", tc.owner, tc.name, o, n)
		}
	}
	// An owner whose name is another's id shares no prefix with it.
	if strings.HasPrefix(scoped("abc", "x"), "abc") {
		t.Error("an owned key starts with a bare id")
	}
}

// TestSessionChunksAreBounded: a session takes at most MaxSessionChunks
// chunks; the same chunk at a held index again is still a no-op, and
// another session is not affected.
func TestSessionChunksAreBounded(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MaxSessionChunks: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.Put(ctx, owner, chunk(i, 100), &Member{Session: "s1", Index: uint64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Put(ctx, owner, chunk(3, 100), &Member{Session: "s1", Index: 3}); !errors.Is(err, ErrSessionFull) {
		t.Errorf("a fourth chunk into a session of at most 3: %v, want %v", err, ErrSessionFull)
	}
	if _, err := s.Put(ctx, owner, chunk(2, 100), &Member{Session: "s1", Index: 2}); err != nil {
		t.Errorf("a retried upload of a held index: %v", err)
	}
	if _, err := s.Put(ctx, owner, chunk(3, 100), &Member{Session: "s2", Index: 0}); err != nil {
		t.Errorf("another session: %v", err)
	}
	if sess, ids, err := s.SessionChunks(owner, "s1"); err != nil || sess.Chunks != 3 || len(ids) != 3 {
		t.Errorf("the full session: %+v %v %v", sess, ids, err)
	}
}
