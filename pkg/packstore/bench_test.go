package packstore

import (
	"context"
	"crypto/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// diskWrites returns the bytes this process has caused to be written to
// storage (Linux /proc/self/io), or -1.
func diskWrites() int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

func benchIngest(b *testing.B, size int) {
	s, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer closeT(b, s)
	chunks := make([][]byte, 64)
	for i := range chunks {
		chunks[i] = make([]byte, size)
		_, _ = rand.Read(chunks[i])
	}
	var n atomic.Int64
	before := diskWrites()
	b.SetBytes(int64(size))
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				copy(buf, chunks[i%64])
				copy(buf, strconv.FormatInt(i, 10)+"/") // distinct chunks
				if _, err := s.Put(context.Background(), owner, buf, &Member{Session: "bench", Index: uint64(i)}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if after := diskWrites(); before >= 0 && after >= 0 {
		b.ReportMetric(float64(after-before)/float64(int64(b.N)*int64(size)), "write-amp")
	}
}

// BenchmarkIngest1MiB and BenchmarkIngest64KiB store distinct chunks from
// 16 concurrent writers; every Put returns only once its chunk is fsynced.
// write-amp is bytes written to storage per byte stored.
//
//	go test -run '^$' -bench Ingest -benchtime 2000x ./pkg/packstore
func BenchmarkIngest1MiB(b *testing.B)  { benchIngest(b, 1<<20) }
func BenchmarkIngest64KiB(b *testing.B) { benchIngest(b, 64<<10) }

// BenchmarkRead1MiB reads verified 1 MiB chunks back from the page cache.
func BenchmarkRead1MiB(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer closeT(b, s)
	ids := make([]string, 64)
	for i := range ids {
		c := make([]byte, 1<<20)
		_, _ = rand.Read(c)
		ids[i], _ = s.Put(context.Background(), owner, c, nil)
	}
	b.SetBytes(1 << 20)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.Get(owner, ids[i%64]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
