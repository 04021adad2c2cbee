package packstore

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// A record in a pack file, in one of two versions. Version 1, written for
// plain payloads (and, before key rings, for encrypted ones):
//
//	magic   4 bytes  "LPK1"
//	flags   1 byte   bit 0: payload encrypted
//	id     32 bytes  SHA-256 of the chunk's plaintext
//	length  4 bytes  payload length (big endian)
//	crc     4 bytes  CRC-32C of everything above and the payload
//	payload
//
// Version 2, written for encrypted payloads, names the key that sealed it:
//
//	magic   4 bytes  "LPK2"
//	flags   1 byte   bit 0: payload encrypted
//	key id  4 bytes  the sealing key's id (keyID, big endian)
//	id     32 bytes
//	length  4 bytes
//	crc     4 bytes  CRC-32C of everything above and the payload
//	payload
//
// The key id is also in the AEAD's associated data (sealAD), so changing
// it, even with a matching CRC, makes the payload fail to open. An
// encrypted version 1 record was sealed with the store's original key
// (the index's legacy key id). The CRC finds torn and damaged records; the
// id, checked against the plaintext on every read, finds everything else.
const (
	headerSize    = 4 + 1 + sha256.Size + 4 + 4
	headerSize2   = headerSize + 4
	flagEncrypted = 1
)

var (
	magic   = [4]byte{'L', 'P', 'K', '1'}
	magic2  = [4]byte{'L', 'P', 'K', '2'}
	castagn = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt reports a record whose bytes are not what was written.
var ErrCorrupt = errors.New("corrupt record")

// encodeHeader writes a version 1 record header for payload into h.
func encodeHeader(h []byte, id [sha256.Size]byte, flags byte, payload []byte) {
	copy(h[0:4], magic[:])
	h[4] = flags
	copy(h[5:37], id[:])
	binary.BigEndian.PutUint32(h[37:41], uint32(len(payload)))
	c := crc32.Update(0, castagn, h[:41])
	c = crc32.Update(c, castagn, payload)
	binary.BigEndian.PutUint32(h[41:45], c)
}

// encodeHeader2 writes a version 2 record header, naming key, into h.
func encodeHeader2(h []byte, id [sha256.Size]byte, flags byte, key uint32, payload []byte) {
	copy(h[0:4], magic2[:])
	h[4] = flags
	binary.BigEndian.PutUint32(h[5:9], key)
	copy(h[9:41], id[:])
	binary.BigEndian.PutUint32(h[41:45], uint32(len(payload)))
	c := crc32.Update(0, castagn, h[:45])
	c = crc32.Update(c, castagn, payload)
	binary.BigEndian.PutUint32(h[45:49], c)
}

// record is a decoded, checksummed record.
type record struct {
	id    [sha256.Size]byte
	flags byte
	// key is the sealing key's id of a version 2 record; versioned says
	// the record is one.
	key       uint32
	versioned bool
	payload   []byte
}

// decodeRecord checks a whole record (header and payload) of either
// version.
func decodeRecord(rec []byte) (record, error) {
	if len(rec) < headerSize {
		return record{}, fmt.Errorf("%w: %d bytes, shorter than a header", ErrCorrupt, len(rec))
	}
	var r record
	var body int // where the length field is
	switch [4]byte(rec[0:4]) {
	case magic:
		body = 37
		r.id = [sha256.Size]byte(rec[5:37])
	case magic2:
		if len(rec) < headerSize2 {
			return record{}, fmt.Errorf("%w: %d bytes, shorter than a header", ErrCorrupt, len(rec))
		}
		body = 41
		r.key, r.versioned = binary.BigEndian.Uint32(rec[5:9]), true
		r.id = [sha256.Size]byte(rec[9:41])
	default:
		return record{}, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	hs := body + 8
	n := binary.BigEndian.Uint32(rec[body : body+4])
	if int(n) != len(rec)-hs {
		return record{}, fmt.Errorf("%w: length %d, record holds %d", ErrCorrupt, n, len(rec)-hs)
	}
	c := crc32.Update(0, castagn, rec[:body+4])
	c = crc32.Update(c, castagn, rec[hs:])
	if c != binary.BigEndian.Uint32(rec[body+4:hs]) {
		return record{}, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	r.flags, r.payload = rec[4], rec[hs:]
	return r, nil
}
