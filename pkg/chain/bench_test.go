package chain_test

import (
	"testing"

	"github.com/pickme/lucid/pkg/chain"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

// BenchmarkAudit100k audits a chain of 100,000 anchor transactions (100
// blocks of 1,000) from their JSON encoding: decode, signature, hash links,
// canonical form and validation of every transaction, and the Merkle root
// of every block recomputed. Run:
//
//	go test -run '^$' -bench Audit100k -benchtime 3x ./pkg/chain
func BenchmarkAudit100k(b *testing.B) {
	c := chaintest.New()
	for blk := 0; blk < 100; blk++ {
		txs := make([]*chain.Transaction, 1000)
		for i := range txs {
			txs[i] = chaintest.Anchor(blk*1000 + i)
		}
		c.Append(txs...)
	}
	encoded := make([][]byte, len(c.Blocks))
	for i, blk := range c.Blocks {
		encoded[i], _ = blk.Encode()
	}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		a := chain.NewAuditor(chain.Origin(chaintest.ChainID), []string{c.Verifier})
		for _, raw := range encoded {
			blk, err := chain.DecodeBlock(raw)
			if err != nil {
				b.Fatal(err)
			}
			if err := a.Next(blk); err != nil {
				b.Fatal(err)
			}
		}
		if a.Txs != 100_001 {
			b.Fatalf("audited %d transactions", a.Txs)
		}
	}
	b.ReportMetric(float64(100_001*b.N)/b.Elapsed().Seconds(), "tx/s")
}
