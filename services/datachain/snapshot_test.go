package datachain

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/packstore"
	"github.com/pickme/lucid/pkg/snapshot"
)

// The data chain's copy holds its index and packs, with the facts of the
// same moment; the active pack is served up to its end at the copy while
// the live one grows.
func TestSnapshotOfTheDataChain(t *testing.T) {
	_, hs, dir := start(t)
	for i := range 5 {
		body := []byte(fmt.Sprintf("chunk %d of the session, long enough to pass the minimum size %01100d", i, i))
		if code, out := do(t, http.MethodPut, hs.URL+"/api/v1/chunks?session_id=6f1c2a9e-0d4b-4c55-9a1e-3b7f2d8c9e01&index="+strconv.Itoa(i), "application/octet-stream", body); code != http.StatusCreated && code != http.StatusOK {
			t.Fatalf("put: %d %s", code, out)
		}
	}
	sc := snapshotapi.New(hs.URL, operator)
	m, err := sc.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f := m.Facts.DataChain
	if m.Service != "datachain" || f == nil || f.Chunks != 5 || f.Sessions != 1 || f.SealedSessions != 0 || f.Packs != 1 || f.PackBytes == 0 {
		t.Fatalf("manifest %+v, facts %+v", m, f)
	}
	if len(m.Files) != 2 || m.Files[0].Path != "chunks/index.db" || m.Files[1].Path != "chunks/packs/pack-000001.dat" || m.Files[1].Size != f.PackBytes {
		t.Fatalf("files = %+v", m.Files)
	}
	// The live pack grows; the copy's stays as it was.
	if code, out := do(t, http.MethodPut, hs.URL+"/api/v1/chunks", "application/octet-stream", []byte(fmt.Sprintf("later %01200d", 7))); code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("put: %d %s", code, out)
	}
	rc, err := sc.Read(context.Background(), m.ID, m.Files[1].Path, 0, m.Files[1].Size)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != m.Files[1].SHA256 {
		t.Fatal("the pack read back does not hash as listed")
	}
	if live, _ := os.Stat(filepath.Join(dir, "chunks", "packs", "pack-000001.dat")); live.Size() <= m.Files[1].Size {
		t.Fatalf("live pack %d bytes, copy %d", live.Size(), m.Files[1].Size)
	}
	if _, err := sc.Read(context.Background(), m.ID, m.Files[1].Path, 0, m.Files[1].Size+1); err == nil {
		t.Fatal("read beyond the copy's end of the active pack")
	}
	if err := sc.Drop(context.Background(), m.ID); err != nil {
		t.Fatal(err)
	}
}

// benchSnapshot fills a data chain with LUCID_BENCH_SNAPSHOT_MIB (default
// 1024) MiB of 1 MiB chunks in 128 MiB packs, then takes copies, hashes
// included, and drops them. fresh starts each copy with no remembered
// hashes, as the first backup after a start does.
func benchSnapshot(b *testing.B, fresh bool) {
	mib := 1024
	if v, err := strconv.Atoi(os.Getenv("LUCID_BENCH_SNAPSHOT_MIB")); err == nil && v > 0 {
		mib = v
	}
	dataDir := b.TempDir()
	store, err := packstore.Open(packstore.Options{Dir: filepath.Join(dataDir, "chunks"), MaxPackBytes: 128 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	chunk := make([]byte, 1<<20)
	for i := range mib {
		_, _ = rand.Read(chunk)
		if _, err := store.Put(context.Background(), owner, chunk, &packstore.Member{Session: "bench", Index: uint64(i)}); err != nil {
			b.Fatal(err)
		}
	}
	app := &App{store: store}
	newServer := func() *snapshot.Server {
		s, err := snapshot.New(snapshot.Options{Service: "datachain", DataDir: dataDir, Take: app.takeSnapshot})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	s := newServer()
	if !fresh { // the first copy hashes everything; the measured ones reuse it
		m, err := s.Take(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Drop(m.ID); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(mib) << 20)
	b.ResetTimer()
	for range b.N {
		if fresh {
			s = newServer()
		}
		m, err := s.Take(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := s.Drop(m.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkSnapshotFirst takes a copy of a 1 GiB data chain hashing every
// byte; BenchmarkSnapshotAgain takes the next one, which re-hashes only
// the index and the active pack's new bytes.
//
//	go test -run '^$' -bench Snapshot -benchtime 5x ./services/datachain
func BenchmarkSnapshotFirst(b *testing.B) { benchSnapshot(b, true) }
func BenchmarkSnapshotAgain(b *testing.B) { benchSnapshot(b, false) }
