package logtree

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/transparency-dev/merkle/proof"
)

func leaf(i int) []byte { return []byte(fmt.Sprintf("leaf-%d", i)) }

// TestProofsAtEverySize builds a tree leaf by leaf and checks inclusion and
// consistency proofs for every pair of sizes against the library verifier.
func TestProofsAtEverySize(t *testing.T) {
	store := MemoryStore{}
	tree, err := New(store, 0)
	if err != nil {
		t.Fatal(err)
	}
	roots := [][]byte{Hasher.EmptyRoot()}
	const n = 37
	for i := 0; i < n; i++ {
		idx, err := tree.AppendLeaf(leaf(i))
		if err != nil || idx != uint64(i) {
			t.Fatalf("append %d: %d %v", i, idx, err)
		}
		r, err := tree.Root()
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, r)
	}
	for size := uint64(1); size <= n; size++ {
		if r, err := tree.RootAt(size); err != nil || !bytes.Equal(r, roots[size]) {
			t.Fatalf("RootAt(%d) = %x, %v; want %x", size, r, err, roots[size])
		}
		for i := uint64(0); i < size; i++ {
			p, err := tree.InclusionProof(i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyInclusion(i, size, Hasher.HashLeaf(leaf(int(i))), p, roots[size]); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
		}
		for s1 := uint64(0); s1 <= size; s1++ {
			p, err := tree.ConsistencyProof(s1, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := VerifyConsistency(s1, size, p, roots[s1], roots[size]); err != nil {
				t.Fatalf("consistency %d..%d: %v", s1, size, err)
			}
		}
	}
	// Reopening the tree from the store gives the same root.
	again, err := New(store, n)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := again.Root(); !bytes.Equal(r, roots[n]) {
		t.Error("reopened tree has another root")
	}
	if _, err := tree.InclusionProof(n, n); err == nil {
		t.Error("proof beyond the tree")
	}
}

// TestKnownRoot pins the RFC 6962 root of a small tree, so a change of hash
// function or leaf encoding cannot pass unnoticed.
func TestKnownRoot(t *testing.T) {
	tree, _ := New(MemoryStore{}, 0)
	for _, l := range []string{"", "\x00", "\x10", "\x20\x21", "\x30\x31", "\x40\x41\x42\x43", "\x50\x51\x52\x53\x54\x55\x56\x57", "\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"} {
		if _, err := tree.AppendLeaf([]byte(l)); err != nil {
			t.Fatal(err)
		}
	}
	// RFC 6962 test vector for these eight leaves.
	const want = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
	r, _ := tree.Root()
	if fmt.Sprintf("%x", r) != want {
		t.Errorf("root = %x, want %s", r, want)
	}
}

// benchProof returns the proof of leaf 12345 in a tree of n leaves (17
// hashes), with the root and the leaf hash.
const n = 1 << 17

func benchProof(b *testing.B) (root []byte, p [][]byte, lh []byte) {
	b.Helper()
	tree, _ := New(MemoryStore{}, 0)
	for i := 0; i < n; i++ {
		_, _ = tree.AppendLeaf(leaf(i))
	}
	root, _ = tree.Root()
	p, _ = tree.InclusionProof(12345, n)
	return root, p, Hasher.HashLeaf(leaf(12345))
}

func BenchmarkVerifyInclusion(b *testing.B) {
	root, p, lh := benchProof(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := VerifyInclusion(12345, n, lh, p, root); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInclusionProof(b *testing.B) {
	tree, _ := New(MemoryStore{}, 0)
	for i := 0; i < n; i++ {
		_, _ = tree.AppendLeaf(leaf(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tree.InclusionProof(uint64(i%n), n); err != nil {
			b.Fatal(err)
		}
	}
}

// TestVerifyInclusionAgreesWithLibrary holds the allocation-free verifier
// to transparency-dev/merkle's answers, for every index of every tree up
// to 70 leaves, with the right proof and with each proof hash corrupted,
// with a wrong index, and with proofs one hash short or long.
func TestVerifyInclusionAgreesWithLibrary(t *testing.T) {
	tree, _ := New(MemoryStore{}, 0)
	for i := 0; i < 70; i++ {
		_, _ = tree.AppendLeaf(leaf(i))
	}
	check := func(idx, size uint64, lh []byte, p [][]byte, root []byte) {
		t.Helper()
		ours := VerifyInclusion(idx, size, lh, p, root)
		theirs := proof.VerifyInclusion(Hasher, idx, size, lh, p, root)
		if (ours == nil) != (theirs == nil) {
			t.Fatalf("index %d size %d: ours %v, library %v", idx, size, ours, theirs)
		}
	}
	for size := uint64(1); size <= 70; size++ {
		root, _ := tree.RootAt(size)
		for idx := uint64(0); idx < size; idx++ {
			p, _ := tree.InclusionProof(idx, size)
			lh := Hasher.HashLeaf(leaf(int(idx)))
			check(idx, size, lh, p, root)
			if VerifyInclusion(idx, size, lh, p, root) != nil {
				t.Fatalf("valid proof %d/%d refused", idx, size)
			}
			for j := range p {
				bad := append([][]byte(nil), p...)
				bad[j] = bytes.Clone(p[j])
				bad[j][0] ^= 1
				check(idx, size, lh, bad, root)
			}
			check((idx+1)%size, size, lh, p, root)
			if len(p) > 0 {
				check(idx, size, lh, p[:len(p)-1], root)
			}
			check(idx, size, lh, append(append([][]byte(nil), p...), lh), root)
		}
	}
}

// BenchmarkVerifyInclusionParallel verifies a proof in a 131,072-leaf tree
// (17 hashes) on every core and reports proofs per second.
func BenchmarkVerifyInclusionParallel(b *testing.B) {
	root, p, lh := benchProof(b)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := VerifyInclusion(12345, n, lh, p, root); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proofs/s")
}

// TestConsistencyTellsAnotherTreeFromABadProof: a well-formed proof that
// leads to another root is ErrRootMismatch, whether the older or the
// newer tree differs; a proof cut short or grown is some other error.
func TestConsistencyTellsAnotherTreeFromABadProof(t *testing.T) {
	build := func(n int, name func(int) []byte) *Tree {
		tr, err := New(MemoryStore{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if _, err := tr.AppendLeaf(name(i)); err != nil {
				t.Fatal(err)
			}
		}
		return tr
	}
	ours := build(20, leaf)
	theirs := build(20, func(i int) []byte {
		if i == 3 {
			return []byte("another leaf")
		}
		return leaf(i)
	})
	root := func(tr *Tree, size uint64) []byte {
		r, err := tr.RootAt(size)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	p, err := ours.ConsistencyProof(7, 20)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyConsistency(7, 20, p, root(ours, 7), root(ours, 20)); err != nil {
		t.Fatalf("a good proof: %v", err)
	}
	theirProof, _ := theirs.ConsistencyProof(7, 20)
	for name, err := range map[string]error{
		"another older tree":      VerifyConsistency(7, 20, theirProof, root(ours, 7), root(theirs, 20)),
		"another newer tree":      VerifyConsistency(7, 20, p, root(ours, 7), root(theirs, 20)),
		"same size, another root": VerifyConsistency(20, 20, nil, root(ours, 20), root(theirs, 20)),
	} {
		if !errors.Is(err, ErrRootMismatch) {
			t.Errorf("%s: %v, want ErrRootMismatch", name, err)
		}
	}
	for name, err := range map[string]error{
		"cut short": VerifyConsistency(7, 20, p[:len(p)-1], root(ours, 7), root(ours, 20)),
		"grown":     VerifyConsistency(7, 20, append(p, p[0]), root(ours, 7), root(ours, 20)),
		"empty":     VerifyConsistency(7, 20, nil, root(ours, 7), root(ours, 20)),
	} {
		if err == nil || errors.Is(err, ErrRootMismatch) {
			t.Errorf("%s: %v, want an error that is not ErrRootMismatch", name, err)
		}
	}
}
