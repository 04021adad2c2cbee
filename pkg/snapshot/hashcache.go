package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
)

// fileKey names a file for the hash cache: its inode, and its path in the
// copy. Hard links of one pack in two copies share the key; a pack's path
// is never reused by another pack (pack numbers only grow), and any other
// file is matched on size and modification time too.
type fileKey struct {
	dev, ino uint64
	path     string
}

// hashed is what is known of a file's hashes.
type hashed struct {
	size   int64
	mtime  time.Time
	length int64 // bytes hashed
	sum    string
	pieces []string
	// state is the whole-file hash after the last whole piece (at
	// boundary), to go on from when an append-only file has grown.
	boundary int64
	state    []byte
}

// hashCache remembers the hashes of the files of the last copy.
type hashCache struct {
	mu      sync.Mutex
	entries map[fileKey]*hashed
}

func newHashCache() *hashCache { return &hashCache{entries: map[fileKey]*hashed{}} }

// keep forgets every file but those of the copy just taken.
func (c *hashCache) keep(seen map[fileKey]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.entries {
		if !seen[k] {
			delete(c.entries, k)
		}
	}
}

// file describes the file at path (rel in the copy), hashed up to length
// when limited, else whole.
func (c *hashCache) file(ctx context.Context, path, rel string, length int64, limited, appendOnly bool) (snapshotapi.File, fileKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return snapshotapi.File{}, fileKey{}, err
	}
	defer func() { _ = f.Close() }() // only read
	fi, err := f.Stat()
	if err != nil {
		return snapshotapi.File{}, fileKey{}, err
	}
	if !limited {
		length = fi.Size()
	}
	if length > fi.Size() {
		return snapshotapi.File{}, fileKey{}, fmt.Errorf("it is %d bytes, fewer than the %d of the copy", fi.Size(), length)
	}
	key := fileKey{path: rel}
	dev, ino, known := fileID(fi)
	key.dev, key.ino = dev, ino
	var prev *hashed
	if known {
		c.mu.Lock()
		prev = c.entries[key]
		c.mu.Unlock()
	}
	out := snapshotapi.File{Path: rel, Size: length, Mode: uint32(fi.Mode().Perm())}
	switch {
	case prev != nil && prev.length == length && (appendOnly || prev.size == fi.Size() && prev.mtime.Equal(fi.ModTime())):
		out.SHA256, out.Pieces = prev.sum, prev.pieces
		return out, key, nil
	case prev != nil && appendOnly && prev.boundary <= length:
	default:
		prev = nil
	}
	h, err := hashFile(ctx, f, length, prev)
	if err != nil {
		return snapshotapi.File{}, fileKey{}, err
	}
	h.size, h.mtime = fi.Size(), fi.ModTime()
	if known {
		c.mu.Lock()
		c.entries[key] = h
		c.mu.Unlock()
	}
	out.SHA256, out.Pieces = h.sum, h.pieces
	return out, key, nil
}

// hashFile hashes f's first length bytes, going on from prev's boundary
// when prev is set.
func hashFile(ctx context.Context, f *os.File, length int64, prev *hashed) (*hashed, error) {
	whole := sha256.New()
	h := &hashed{length: length, pieces: []string{}}
	var off int64
	if prev != nil && prev.state != nil {
		if err := whole.(encoding.BinaryUnmarshaler).UnmarshalBinary(prev.state); err != nil {
			return nil, err
		}
		off = prev.boundary
		h.pieces = append(h.pieces, prev.pieces[:off/snapshotapi.PieceSize]...)
		h.boundary, h.state = prev.boundary, prev.state
	}
	buf := make([]byte, snapshotapi.PieceSize)
	for off < length {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(int64(snapshotapi.PieceSize), length-off)
		if _, err := io.ReadFull(io.NewSectionReader(f, off, n), buf[:n]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("it ended before byte %d", off+n)
			}
			return nil, err
		}
		whole.Write(buf[:n])
		sum := sha256.Sum256(buf[:n])
		h.pieces = append(h.pieces, hex.EncodeToString(sum[:]))
		off += n
		if n == snapshotapi.PieceSize {
			if h.state, h.boundary = marshalState(whole), off; h.state == nil {
				h.boundary = 0
			}
		}
	}
	h.sum = hex.EncodeToString(whole.Sum(nil))
	return h, nil
}

// marshalState is the hash's state, or nil if it cannot be saved.
func marshalState(h hash.Hash) []byte {
	m, ok := h.(encoding.BinaryMarshaler)
	if !ok {
		return nil
	}
	b, err := m.MarshalBinary()
	if err != nil {
		return nil
	}
	return b
}
