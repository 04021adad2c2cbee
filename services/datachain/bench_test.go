package datachain

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pickme/lucid/pkg/packstore"
)

// BenchmarkSessionProof generates inclusion proofs of random positions in
// a session of 100,000 chunks, as GET .../proof/{index} does minus HTTP:
// the session lookup, the cached tree, the proof.
//
//	go test -run '^$' -bench SessionProof ./services/datachain
func BenchmarkSessionProof(b *testing.B) {
	app, _, _ := start(b)
	const n = 100_000
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1024)
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				binary.BigEndian.PutUint64(buf, uint64(i))
				if _, err := app.store.Put(context.Background(), owner, buf, &packstore.Member{Session: sid, Index: uint64(i)}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if _, _, err := app.tree(context.Background(), owner, sid); err != nil { // build the cache once
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := uint64(7)
		for pb.Next() {
			i = (i*2862933555777941757 + 3037000493) % n
			_, t, err := app.tree(context.Background(), owner, sid)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := t.tree.InclusionProof(i, uint64(len(t.ids))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proofs/s")
}
