package packstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	keyA = bytes.Repeat([]byte("A"), 32)
	keyB = bytes.Repeat([]byte("B"), 32)
)

func openRing(t *testing.T, dir string, maxPack int64, current []byte, previous ...[]byte) *Store {
	t.Helper()
	s, err := Open(Options{Dir: dir, Key: current, PreviousKeys: previous, MaxPackBytes: maxPack})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustID(t *testing.T, secret []byte) uint32 {
	t.Helper()
	id, err := keyID(secret)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// recordAt reads the record of owner's chunk id as it is in its pack.
func recordAt(t *testing.T, s *Store, id string) (Location, []byte) {
	t.Helper()
	loc, err := s.Locate(owner, id)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, loc.Length)
	f, err := os.Open(s.packPath(loc.Pack))
	if err != nil {
		t.Fatal(err)
	}
	defer closeT(t, f)
	if _, err := f.ReadAt(raw, loc.Offset); err != nil {
		t.Fatal(err)
	}
	return loc, raw
}

func usage(t *testing.T, s *Store) map[string]int {
	t.Helper()
	ks, err := s.KeyUsage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, k := range ks {
		out[k.KeyID] = k.Records
	}
	return out
}

func readAll(t *testing.T, s *Store, ids map[string][]byte) {
	t.Helper()
	for id, want := range ids {
		if got, err := s.Get(owner, id); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("chunk %s: %v", id, err)
		}
	}
}

// TestEncryptionKeyRotation: chunks written with key A read under the ring
// (B current, A previous); new chunks are sealed with B and their records
// name B; Compact re-encrypts every A record, in closed packs and in the
// active one, after which B alone opens the store and reads everything.
func TestEncryptionKeyRotation(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		maxPack int64
	}{{"one pack", 1 << 30}, {"several packs", 8 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ids := map[string][]byte{}
			s := openRing(t, dir, tc.maxPack, keyA)
			for i := range 6 {
				data := chunk(i, 3000)
				id, err := s.Put(ctx, owner, data, &Member{Session: "s", Index: uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				ids[id] = data
			}
			closeT(t, s)

			s = openRing(t, dir, tc.maxPack, keyB, keyA)
			readAll(t, s, ids)
			var newID string
			for i := 6; i < 9; i++ {
				data := chunk(i, 3000)
				id, err := s.Put(ctx, owner, data, &Member{Session: "s", Index: uint64(i)})
				if err != nil {
					t.Fatal(err)
				}
				ids[id], newID = data, id
			}
			_, raw := recordAt(t, s, newID)
			if string(raw[:4]) != "LPK2" || binary.BigEndian.Uint32(raw[5:9]) != mustID(t, keyB) {
				t.Fatalf("new record: magic %q key %x, want LPK2 naming B (%x)", raw[:4], raw[5:9], mustID(t, keyB))
			}
			a, b := KeyIDString(mustID(t, keyA)), KeyIDString(mustID(t, keyB))
			if u := usage(t, s); u[a] != 6 || u[b] != 3 {
				t.Fatalf("key usage before compaction: %v", u)
			}
			rep, err := s.Compact(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if rep.ReencryptedChunks != 6 {
				t.Fatalf("re-encrypted %d chunks, want 6 (%+v)", rep.ReencryptedChunks, rep)
			}
			if u := usage(t, s); u[a] != 0 || u[b] != 9 {
				t.Fatalf("key usage after compaction: %v", u)
			}
			readAll(t, s, ids)
			// No pack keeps a record of key A, live or dead.
			assertNoKey(t, dir, mustID(t, keyA))
			closeT(t, s)

			s = openRing(t, dir, tc.maxPack, keyB)
			readAll(t, s, ids)
			if _, ids2, err := s.SessionChunks(owner, "s"); err != nil || len(ids2) != 9 {
				t.Fatalf("session after rotation: %v %v", ids2, err)
			}
			closeT(t, s)
			if _, err := Open(Options{Dir: dir, Key: keyA}); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("the retired key alone: %v", err)
			}
		})
	}
}

// assertNoKey fails if any pack under dir holds an encrypted record: of
// version 1 (sealed before key rings) or of version 2 naming key.
func assertNoKey(t *testing.T, dir string, key uint32) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dir, "packs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for off := 0; off+headerSize <= len(data); {
			r, hs := data[off:], headerSize
			if string(r[:4]) == "LPK2" {
				hs = headerSize2
				if binary.BigEndian.Uint32(r[5:9]) == key {
					t.Fatalf("%s at %d: a record of key %x is left", p, off, key)
				}
			} else if r[4]&flagEncrypted != 0 {
				t.Fatalf("%s at %d: an encrypted version 1 record is left", p, off)
			}
			off += hs + int(binary.BigEndian.Uint32(r[hs-8:hs-4]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// copyDir copies the fixture store src to a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestVersion1RecordsStillRead: testdata/v1-encrypted was written, with key
// A, by the packstore of before key rings (LPK1 records). It reads with A,
// and with the ring (B, A); compaction re-encrypts it to B, after which B
// alone reads it.
func TestVersion1RecordsStillRead(t *testing.T) {
	ctx := context.Background()
	dir := copyDir(t, filepath.Join("testdata", "v1-encrypted"))
	readV1 := func(s *Store) {
		t.Helper()
		_, ids, err := s.SessionChunks("alice", "v1")
		if err != nil || len(ids) != 4 {
			t.Fatalf("session v1: %v %v", ids, err)
		}
		for i, id := range ids {
			data, err := s.Get("alice", id)
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			if !bytes.HasPrefix(data, []byte("v1-chunk-")) || len(data) != 3000 {
				t.Fatalf("chunk %d: %q...", i, data[:12])
			}
		}
	}
	if _, err := Open(Options{Dir: dir, Key: keyB}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("a new key without the old one: %v", err)
	}
	s := openRing(t, dir, 0, keyA)
	readV1(s)
	closeT(t, s)
	s = openRing(t, dir, 0, keyB, keyA)
	readV1(s)
	if u := usage(t, s); u[KeyIDString(mustID(t, keyA))] != 4 {
		t.Fatalf("version 1 records are counted under A: %v", u)
	}
	before := usageT(t, s, "alice")
	rep, err := s.Compact(ctx)
	if err != nil || rep.ReencryptedChunks != 4 {
		t.Fatalf("compact: %+v %v", rep, err)
	}
	// Re-encrypted as version 2 records, 4 bytes longer each: the owner's
	// usage follows them.
	if after := usageT(t, s, "alice"); after.Bytes != before.Bytes+4*4 {
		t.Fatalf("alice's usage %+v before re-encryption, %+v after", before, after)
	}
	if !s.rekeying() {
		t.Fatal("with A in the ring, compaction has to look")
	}
	closeT(t, s)
	// With A dropped, one compaction finds nothing under it and stops
	// looking from then on.
	s = openRing(t, dir, 0, keyB)
	if !s.rekeying() {
		t.Fatal("before a compaction, the original key is still A")
	}
	if _, err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if s.rekeying() || s.legacy.Load() != s.key {
		t.Fatal("the original key is still taken to be A")
	}
	readV1(s)
	closeT(t, s)
	assertNoKey(t, dir, mustID(t, keyA))
	s = openRing(t, dir, 0, keyB)
	defer closeT(t, s)
	readV1(s)
}

// TestKeyIDIsBound: a record's key id cannot be changed undetected: with
// the CRC left, the checksum fails; with the CRC fixed, the AEAD (which
// binds the key id) fails, or the id names no key of the ring, which the
// error says by its id.
func TestKeyIDIsBound(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openRing(t, dir, 0, keyA)
	oldID, err := s.Put(ctx, owner, chunk(1, 2000), nil)
	if err != nil {
		t.Fatal(err)
	}
	closeT(t, s)
	s = openRing(t, dir, 0, keyB, keyA)
	id, err := s.Put(ctx, owner, chunk(2, 2000), nil)
	if err != nil {
		t.Fatal(err)
	}
	rewrite := func(key uint32, fixCRC bool) {
		t.Helper()
		loc, raw := recordAt(t, s, id)
		binary.BigEndian.PutUint32(raw[5:9], key)
		if fixCRC {
			c := crc32.Update(0, castagn, raw[:45])
			c = crc32.Update(c, castagn, raw[headerSize2:])
			binary.BigEndian.PutUint32(raw[45:49], c)
		}
		f, err := os.OpenFile(s.packPath(loc.Pack), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(raw, loc.Offset); err != nil {
			t.Fatal(err)
		}
		closeT(t, f)
	}
	rewrite(mustID(t, keyA), false)
	if _, err := s.Get(owner, id); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("key id changed, CRC not: %v", err)
	}
	rewrite(mustID(t, keyA), true)
	if _, err := s.Get(owner, id); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "decryption failed") {
		t.Fatalf("key id swapped for another key of the ring: %v", err)
	}
	rewrite(0x01020304, true)
	if _, err := s.Get(owner, id); !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "01020304") {
		t.Fatalf("key id of no key: %v", err)
	}
	rewrite(mustID(t, keyB), true)
	if _, err := s.Get(owner, id); err != nil {
		t.Fatalf("restored: %v", err)
	}
	closeT(t, s)
	// The old key dropped before compaction: its records say which key
	// they need.
	s = openRing(t, dir, 0, keyB)
	defer closeT(t, s)
	_, err = s.Get(owner, oldID)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), KeyIDString(mustID(t, keyA))) {
		t.Fatalf("a record of a key not given: %v", err)
	}
	if strings.Contains(err.Error(), string(keyA)) {
		t.Fatal("the error holds the key")
	}
}
