package packstore

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// restoreSnapshot writes snap's copy in from into a new store directory as
// a restore would: the index as is, every pack copied, the active one cut
// to its committed end.
func restoreSnapshot(t *testing.T, from string, snap *Snapshot) string {
	t.Helper()
	to := t.TempDir()
	copyFile := func(rel string, n int64) {
		src, err := os.Open(filepath.Join(from, rel))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = src.Close() }() // only read
		if err := os.MkdirAll(filepath.Dir(filepath.Join(to, rel)), 0o700); err != nil {
			t.Fatal(err)
		}
		dst, err := os.OpenFile(filepath.Join(to, rel), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = src
		if n >= 0 {
			r = io.LimitReader(src, n)
		}
		if _, err := io.Copy(dst, r); err != nil {
			t.Fatal(err)
		}
		closeT(t, dst)
	}
	copyFile("index.db", -1)
	for _, p := range snap.Packs {
		n := int64(-1)
		if p == snap.Active {
			n = snap.ActiveEnd
		}
		copyFile(p, n)
	}
	return to
}

// A snapshot taken while writers keep putting (and packs rotate) opens as
// a store in which every indexed chunk reads back and verifies, holding
// every chunk whose Put returned before the snapshot began.
func TestSnapshotWhileWriting(t *testing.T) {
	for _, key := range [][]byte{nil, []byte("0123456789abcdef0123456789abcdef")} {
		t.Run(map[bool]string{true: "encrypted", false: "plain"}[key != nil], func(t *testing.T) {
			s, err := Open(Options{Dir: t.TempDir(), Key: key, MaxPackBytes: 256 << 10})
			if err != nil {
				t.Fatal(err)
			}
			defer closeT(t, s)
			ctx, cancel := context.WithCancel(context.Background())
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				done []string
				n    atomic.Int64
			)
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						i := int(n.Add(1))
						id, err := s.Put(ctx, owner, chunk(i, 8<<10+i%5000), &Member{Session: "s" + string(rune('a'+i%3)), Index: uint64(i)})
						if err != nil {
							if ctx.Err() == nil {
								t.Error(err)
							}
							return
						}
						mu.Lock()
						done = append(done, id)
						mu.Unlock()
					}
				}()
			}
			// A sealed session, and some chunks landed before the copy.
			if _, err := s.Put(ctx, owner, chunk(-1, 100), &Member{Session: "sealed", Index: 0}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Seal(owner, "sealed", "anchor-1"); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 50 || n.Load() < 100; i++ {
				if _, err := s.Put(ctx, owner, chunk(-2-i, 100), nil); err != nil {
					t.Fatal(err)
				}
			}
			mu.Lock()
			before := append([]string(nil), done...)
			mu.Unlock()
			dir := filepath.Join(t.TempDir(), "copy")
			snap, err := s.Snapshot(context.Background(), dir)
			if err != nil {
				t.Fatal(err)
			}
			// Writers go on after the copy, growing the linked active pack.
			for i := 0; i < 50 || n.Load() < 250; i++ {
				if _, err := s.Put(ctx, owner, chunk(-100000-i, 100), nil); err != nil {
					t.Fatal(err)
				}
			}
			cancel()
			wg.Wait()
			if len(snap.Packs) < 2 || snap.SealedSessions != 1 || snap.Sessions < 1 {
				t.Fatalf("snapshot = %+v; want several packs and one sealed session", snap)
			}
			fi, err := os.Stat(filepath.Join(dir, snap.Active))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() < snap.ActiveEnd {
				t.Fatalf("the active pack is %d bytes, less than its end %d", fi.Size(), snap.ActiveEnd)
			}

			r, err := Open(Options{Dir: restoreSnapshot(t, dir, snap), Key: key, MaxPackBytes: 256 << 10})
			if err != nil {
				t.Fatalf("open the restored copy: %v", err)
			}
			defer closeT(t, r)
			rep, err := r.Scrub(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Damaged) != 0 || rep.Chunks != snap.Chunks {
				t.Fatalf("scrub of the copy: %d chunks, %d damaged (%+v); the snapshot counted %d", rep.Chunks, len(rep.Damaged), rep.Damaged, snap.Chunks)
			}
			for _, id := range before {
				if _, err := r.Get(owner, id); err != nil {
					t.Fatalf("chunk %s, stored before the snapshot: %v", id, err)
				}
			}
			st, err := r.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.Chunks != snap.Chunks || st.Sessions != snap.Sessions || st.PackBytes != snap.PackBytes {
				t.Fatalf("restored stats %+v, snapshot %+v", st, snap)
			}
			// The restored store takes writes again.
			if _, err := r.Put(context.Background(), owner, chunk(1<<20, 1000), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A pack compacted away after the copy stays readable in it: the link
// holds its bytes.
func TestSnapshotOutlivesCompaction(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), MaxPackBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, s)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 40; i++ {
		id, err := s.Put(ctx, owner, chunk(i, 8<<10), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	dir := filepath.Join(t.TempDir(), "copy")
	snap, err := s.Snapshot(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:35] {
		if err := s.Delete(owner, id); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Compact(ctx)
	if err != nil || len(rep.Packs) == 0 {
		t.Fatalf("compact: %+v %v", rep, err)
	}
	r := openT(t, restoreSnapshot(t, dir, snap), nil)
	defer closeT(t, r)
	for _, id := range ids {
		if _, err := r.Get(owner, id); err != nil {
			t.Fatalf("chunk %s in the copy: %v", id, err)
		}
	}
}
