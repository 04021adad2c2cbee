package packstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A record in a pack file:
//
//	magic   4 bytes  "LPK1"
//	flags   1 byte   bit 0: payload encrypted
//	id     32 bytes  SHA-256 of the chunk's plaintext
//	length  4 bytes  payload length (big endian)
//	crc     4 bytes  CRC-32C of everything above and the payload
//	payload
//
// The CRC finds torn and damaged records; the id, checked against the
// plaintext on every read, finds everything else.
const (
	headerSize    = 4 + 1 + sha256.Size + 4 + 4
	flagEncrypted = 1
)

var (
	magic   = [4]byte{'L', 'P', 'K', '1'}
	castagn = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt reports a record whose bytes are not what was written.
var ErrCorrupt = errors.New("corrupt record")

// encodeHeader writes a record header for payload into h.
func encodeHeader(h []byte, id [sha256.Size]byte, flags byte, payload []byte) {
	copy(h[0:4], magic[:])
	h[4] = flags
	copy(h[5:37], id[:])
	binary.BigEndian.PutUint32(h[37:41], uint32(len(payload)))
	c := crc32.Update(0, castagn, h[:41])
	c = crc32.Update(c, castagn, payload)
	binary.BigEndian.PutUint32(h[41:45], c)
}

// decodeRecord checks a whole record (header and payload) and returns its
// id, flags and payload.
func decodeRecord(rec []byte) (id [sha256.Size]byte, flags byte, payload []byte, err error) {
	if len(rec) < headerSize {
		return id, 0, nil, fmt.Errorf("%w: %d bytes, shorter than a header", ErrCorrupt, len(rec))
	}
	if [4]byte(rec[0:4]) != magic {
		return id, 0, nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	n := binary.BigEndian.Uint32(rec[37:41])
	if int(n) != len(rec)-headerSize {
		return id, 0, nil, fmt.Errorf("%w: length %d, record holds %d", ErrCorrupt, n, len(rec)-headerSize)
	}
	c := crc32.Update(0, castagn, rec[:41])
	c = crc32.Update(c, castagn, rec[headerSize:])
	if c != binary.BigEndian.Uint32(rec[41:45]) {
		return id, 0, nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	return [sha256.Size]byte(rec[5:37]), rec[4], rec[headerSize:], nil
}
