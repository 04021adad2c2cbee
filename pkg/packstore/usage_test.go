package packstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// plainRecord is what a plain chunk of size bytes takes on disk.
func plainRecord(size int) uint64 { return uint64(headerSize + size) }

// countedUsage is owner's usage counted from the chunks the index holds
// and the deleted records it keeps by pack.
func countedUsage(t *testing.T, s *Store, owner string) Usage {
	t.Helper()
	var u Usage
	err := s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketDeadRecords).ForEach(func(k, v []byte) error {
			if string(k[4:]) == owner {
				u.DeadBytes += binary.BigEndian.Uint64(v)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketChunks).ForEach(func(k, v []byte) error {
			if o, _ := unscoped(string(k)); o == owner {
				u.Bytes += uint64(decodeLocation(v).Length)
				u.Chunks++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// editIndex changes the closed store's index in dir, as another release
// of the store would have.
func editIndex(t *testing.T, dir string, edit func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, db)
	if err := db.Update(edit); err != nil {
		t.Fatal(err)
	}
}

func usageT(t *testing.T, s *Store, owner string) Usage {
	t.Helper()
	u, err := s.Usage(owner)
	if err != nil {
		t.Fatal(err)
	}
	if want := countedUsage(t, s, owner); u != want {
		t.Fatalf("usage of %s is kept as %+v; its chunks take %+v", owner, u, want)
	}
	return u
}

// TestQuotaBoundsAnOwner: an owner's new chunks stop at its quota and
// nothing of a refused one is written; what it stored already (a retried
// upload, one more session holding it) is never refused; another owner is
// not affected; a delete makes room again.
func TestQuotaBoundsAnOwner(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	quota := 3 * plainRecord(4096)
	for i := range 3 {
		if _, _, err := s.AddWithin(ctx, owner, chunk(i, 4096), &Member{Session: "s", Index: uint64(i)}, quota); err != nil {
			t.Fatalf("chunk %d within the quota: %v", i, err)
		}
	}
	if u := usageT(t, s, owner); u != (Usage{Bytes: quota, Chunks: 3}) {
		t.Fatalf("usage %+v", u)
	}
	before, _ := s.Stats()
	_, _, err := s.AddWithin(ctx, owner, chunk(3, 4096), &Member{Session: "s", Index: 3}, quota)
	var qe *QuotaError
	if !errors.As(err, &qe) || !errors.Is(err, ErrQuota) || qe.Bytes != quota || qe.Quota != quota || qe.Record != plainRecord(4096) || qe.Deleted() {
		t.Fatalf("a chunk past the quota: %v", err)
	}
	after, _ := s.Stats()
	if s.Has(owner, ID(chunk(3, 4096))) || after.PackBytes != before.PackBytes {
		t.Fatalf("the refused chunk was written: %d pack bytes, then %d", before.PackBytes, after.PackBytes)
	}
	if sess, err := s.Session(owner, "s"); err != nil || sess.Chunks != 3 {
		t.Fatalf("the refused chunk joined its session: %+v, %v", sess, err)
	}
	// Stored already: a retry, and the same bytes in another session.
	if _, isNew, err := s.AddWithin(ctx, owner, chunk(0, 4096), &Member{Session: "t", Index: 0}, quota); err != nil || isNew {
		t.Fatalf("a chunk the owner has, at its quota: new %v, %v", isNew, err)
	}
	if _, _, err := s.AddWithin(ctx, "bob", chunk(3, 4096), nil, quota); err != nil {
		t.Fatalf("another owner: %v", err)
	}
	if err := s.Delete(owner, ID(chunk(1, 4096))); err != nil {
		t.Fatal(err)
	}
	if u := usageT(t, s, owner); u != (Usage{Bytes: 2 * plainRecord(4096), Chunks: 2, DeadBytes: plainRecord(4096)}) {
		t.Fatalf("usage after a delete: %+v", u)
	}
	if _, _, err := s.AddWithin(ctx, owner, chunk(3, 4096), nil, quota); err != nil {
		t.Fatalf("after a delete made room: %v", err)
	}
	usageT(t, s, "bob")
}

// TestQuotaHoldsForUploadsAtOnce: uploads racing each other cannot pass
// the quota together.
func TestQuotaHoldsForUploadsAtOnce(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	quota := 5 * plainRecord(2048)
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored, refused := 0, 0
	for i := range 40 {
		wg.Go(func() {
			_, _, err := s.AddWithin(context.Background(), owner, chunk(i, 2048), nil, quota)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				stored++
			case errors.Is(err, ErrQuota):
				refused++
			default:
				t.Errorf("upload %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if stored != 5 || refused != 35 {
		t.Fatalf("%d stored and %d refused; the quota holds 5", stored, refused)
	}
	if u := usageT(t, s, owner); u.Bytes != quota {
		t.Fatalf("usage %+v", u)
	}
}

// TestQuotaLetsARepairIn: the upload that repairs a damaged chunk is not
// new bytes, so an owner at its quota can still make it.
func TestQuotaLetsARepairIn(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	data := chunk(7, 3000)
	id, _, err := s.AddWithin(ctx, owner, data, nil, plainRecord(3000))
	if err != nil {
		t.Fatal(err)
	}
	damage(t, s, id)
	if _, err := s.Get(owner, id); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of the damaged chunk: %v", err)
	}
	if _, _, err := s.AddWithin(ctx, owner, data, nil, plainRecord(3000)); err != nil {
		t.Fatalf("the repair at the quota: %v", err)
	}
	if _, err := s.Get(owner, id); err != nil {
		t.Fatalf("after the repair: %v", err)
	}
	// The damaged record it replaced takes room until compaction.
	if u := usageT(t, s, owner); u != (Usage{Bytes: plainRecord(3000), Chunks: 1, DeadBytes: plainRecord(3000)}) {
		t.Fatalf("usage after the repair: %+v", u)
	}
}

// TestUsageOfAStoreFromBefore: a store written before usage was kept is
// counted when opened; compaction, which moves records, keeps the count.
func TestUsageOfAStoreFromBefore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, MaxPackBytes: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 12 {
		for _, o := range []string{owner, "bob", ""} {
			if _, err := s.Put(ctx, o, chunk(i, 1000+i), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 6 {
		if err := s.Delete(owner, ID(chunk(i, 1000+i))); err != nil {
			t.Fatal(err)
		}
	}
	closeT(t, s)
	editIndex(t, dir, func(tx *bolt.Tx) error {
		return errors.Join(tx.DeleteBucket(bucketUsage), tx.DeleteBucket(bucketDeadRecords))
	})

	s = openT(t, dir, nil)
	defer func() { closeT(t, s) }()
	if u := usageT(t, s, owner); u.Chunks != 6 {
		t.Fatalf("%s: %+v", owner, u)
	}
	if u := usageT(t, s, "bob"); u.Chunks != 12 {
		t.Fatalf("bob: %+v", u)
	}
	if u, _ := s.Usage(""); u != (Usage{}) {
		t.Fatalf("chunks from before owners are counted: %+v", u)
	}
	if _, err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	usageT(t, s, owner)
	usageT(t, s, "bob")

	// An older release that ran on the store meanwhile (a rollback) left
	// the counts behind what the index holds: counted afresh at open.
	closeT(t, s)
	editIndex(t, dir, func(tx *bolt.Tx) error { return changeUsage(tx, "bob", -1000, -3, 0) })
	s = openT(t, dir, nil)
	if u := usageT(t, s, "bob"); u.Chunks != 12 {
		t.Fatalf("bob after an older release: %+v", u)
	}
}

// TestDeletingCannotOutrunCompaction: deleting makes room for new chunks
// at once, but what an owner deleted takes room until compaction
// reclaims it, so storing and deleting in turn stops at twice the quota
// on disk; compaction gives it back.
func TestDeletingCannotOutrunCompaction(t *testing.T) {
	// One record per pack, so that compaction can remove each.
	s, err := Open(Options{Dir: t.TempDir(), MaxPackBytes: int64(plainRecord(2048))})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	ctx := context.Background()
	quota := 2 * plainRecord(2048)
	for i := range 4 {
		id, _, err := s.AddWithin(ctx, owner, chunk(i, 2048), nil, quota)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := s.Delete(owner, id); err != nil {
			t.Fatal(err)
		}
	}
	if u := usageT(t, s, owner); u != (Usage{DeadBytes: 4 * plainRecord(2048)}) {
		t.Fatalf("after four rounds: %+v", u)
	}
	_, _, err = s.AddWithin(ctx, owner, chunk(4, 2048), nil, quota)
	var qe *QuotaError
	if !errors.As(err, &qe) || !qe.Deleted() {
		t.Fatalf("a fifth round with twice the quota deleted but not reclaimed: %v", err)
	}
	if _, err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if u := usageT(t, s, owner); u.DeadBytes >= 4*plainRecord(2048) {
		t.Fatalf("compaction gave nothing back: %+v", u)
	}
	if _, _, err := s.AddWithin(ctx, owner, chunk(4, 2048), nil, quota); err != nil {
		t.Fatalf("after compaction: %v", err)
	}
}

// TestCompactionClosesAMostlyDeletedActivePack: deleted records in the
// active pack do not wait for it to fill (a gigabyte by default) to be
// reclaimed, nor their owner's quota with them.
func TestCompactionClosesAMostlyDeletedActivePack(t *testing.T) {
	s := openT(t, t.TempDir(), nil)
	defer closeT(t, s)
	ctx := context.Background()
	var ids []string
	for i := range 40 { // 40 × 64 KiB: 2.5 MiB in the active pack
		id, err := s.Put(ctx, owner, chunk(i, 64<<10), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids[:30] {
		if err := s.Delete(owner, id); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := s.Stats()
	rep, err := s.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := s.Stats()
	if len(rep.Packs) != 1 || after.PackBytes >= before.PackBytes/2 {
		t.Fatalf("compaction %+v: %d pack bytes, then %d", rep, before.PackBytes, after.PackBytes)
	}
	if u := usageT(t, s, owner); u != (Usage{Bytes: 10 * plainRecord(64<<10), Chunks: 10}) {
		t.Fatalf("usage after compaction: %+v", u)
	}
	for i, id := range ids[30:] {
		if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, chunk(30+i, 64<<10)) {
			t.Fatalf("chunk %d after compaction: %v", 30+i, err)
		}
	}
}

// TestDeadRecordsOfAPackGoneAreDropped: a release from before usage was
// kept compacts packs without giving their deleted records back; at the
// next open those of packs no longer on disk are dropped, not charged to
// their owners for good.
func TestDeadRecordsOfAPackGoneAreDropped(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, nil)
	id, err := s.Put(context.Background(), owner, chunk(1, 2048), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(owner, id); err != nil {
		t.Fatal(err)
	}
	closeT(t, s)
	editIndex(t, dir, func(tx *bolt.Tx) error { return markDead(tx, owner, Location{Pack: 99, Length: 5000}) })
	s = openT(t, dir, nil)
	defer closeT(t, s)
	if u := usageT(t, s, owner); u.DeadBytes != plainRecord(2048) {
		t.Errorf("dead bytes %d, want those of pack 1 alone (%d)", u.DeadBytes, plainRecord(2048))
	}
}
