// Package packstore is the data chain's content-addressed chunk store.
//
// Chunk bytes go to append-only pack files as checksummed records; the
// index (chunk id → pack, offset, length; session → chunk ids in index
// order) lives in bbolt. Writes are group-committed: concurrent Puts share
// one pack write, one fsync of the pack and one index commit, and a Put
// returns only after both are durable. On open, bytes after the last
// committed record of the newest pack (a torn tail from a crash) are cut
// off. Every read checks the record's CRC and the chunk's SHA-256 against
// its id, so a damaged chunk is an error, never wrong data. With a key,
// payloads are encrypted at rest with XChaCha20-Poly1305.
//
// Keys form a ring so ENCRYPTION_KEY can be rotated: new records are
// sealed with the current key and name it in their header; previous keys
// still open what they sealed; Compact re-encrypts live records of a
// previous key with the current one, after which KeyUsage shows the old
// key is no longer needed.
//
// Every chunk and session belongs to an owner (the principal that stored
// it), and each owner has a namespace of its own: the same bytes stored by
// two owners are two chunks, and a session id names one session per
// owner. So nothing one owner does or asks can tell it whether another
// owner stored something, not even by timing. The empty owner holds what
// was stored before owners existed.
package packstore

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/atomicfile"
)

// Index keys are scoped by owner (see scoped): a chunk's key is its id,
// a session's its id, each scoped.
var (
	bucketChunks   = []byte("chunks")   // chunk key → pack(4) offset(8) length(4)
	bucketSessions = []byte("sessions") // session key → Session JSON
	bucketMembers  = []byte("members")  // session key ‖ 0 ‖ index(8) → chunk id
	bucketRefs     = []byte("refs")     // chunk key ‖ 0 ‖ session id → ""
	bucketMeta     = []byte("meta")
	bucketDamaged  = []byte("damaged") // chunk key → "" for chunks a scrub found damaged
	keyActivePack  = []byte("active_pack")
	keyPackEnd     = []byte("pack_end") // committed end of the active pack
	keyKeyCheck    = []byte("key_check")
	// keyLegacyKey is the id of the key that sealed the encrypted version
	// 1 records: the key the store had before key rings.
	keyLegacyKey = []byte("legacy_key_id")
	keyDeadBytes = []byte("dead_bytes")
)

// Errors callers map to answers.
var (
	ErrNotFound    = errors.New("chunk not found")
	ErrSealed      = errors.New("session is sealed")
	ErrIndexTaken  = errors.New("another chunk holds that index in the session")
	ErrSessionFull = errors.New("the session holds as many chunks as a session may")
	ErrReferenced  = errors.New("chunk is referenced by a sealed session")
)

// Options configure a Store.
type Options struct {
	// Dir holds packs/ and index.db.
	Dir string
	// Key, when set, encrypts payloads at rest: new records are sealed
	// with it. A store keeps the mode it was created with, and opens only
	// if Key or one of PreviousKeys is the key it last recorded (it then
	// records Key).
	Key []byte
	// PreviousKeys still open the records they sealed, until Compact has
	// re-encrypted those with Key.
	PreviousKeys [][]byte
	// MaxPackBytes starts a new pack once the active one is this big.
	MaxPackBytes int64
	// MaxSessionChunks, when above 0, is how many chunks a session may
	// hold: what is derived from a session whole (its Merkle tree, its
	// list of chunks) stays bounded in memory. A chunk beyond it is
	// refused with ErrSessionFull.
	MaxSessionChunks uint64
}

// Store is a chunk store. It is safe for concurrent use.
type Store struct {
	opts Options
	db   *bolt.DB
	// aead seals new records; key is its id. keys opens records by the
	// key id they name, and legacy is the key of encrypted version 1
	// records.
	aead cipher.AEAD
	key  uint32
	keys map[uint32]cipher.AEAD
	// legacy changes once, when a compaction finds no version 1 record
	// left under a previous key (Compact), while reads go on.
	legacy atomic.Uint32

	writes chan *writeReq
	done   chan struct{}
	// life guards writes against Close: senders hold it shared, Close
	// takes it to close the queue, so nobody sends on a closed channel.
	life   sync.RWMutex
	closed bool
	// commitMu serialises index changes that depend on what the index
	// holds: a batch commit (check, write, commit) and a Delete.
	commitMu sync.Mutex
	// compactMu lets one compaction run at a time.
	compactMu sync.Mutex

	mu       sync.Mutex // active pack
	active   *os.File
	activeN  uint32
	activeSz int64

	readMu  sync.Mutex
	readers map[uint32]*os.File
}

// Location is where a chunk's record is.
type Location struct {
	Pack   uint32
	Offset int64
	Length uint32 // of the whole record
}

func (l Location) encode() []byte {
	b := binary.BigEndian.AppendUint32(nil, l.Pack)
	b = binary.BigEndian.AppendUint64(b, uint64(l.Offset))
	return binary.BigEndian.AppendUint32(b, l.Length)
}

func decodeLocation(v []byte) Location {
	return Location{Pack: binary.BigEndian.Uint32(v[0:4]), Offset: int64(binary.BigEndian.Uint64(v[4:12])), Length: binary.BigEndian.Uint32(v[12:16])}
}

// Open opens or creates the store in opts.Dir, cutting off a torn tail.
func Open(opts Options) (*Store, error) {
	if opts.MaxPackBytes <= 0 {
		opts.MaxPackBytes = 1 << 30
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "packs"), 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(opts.Dir, "index.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open chunk index: %w", err)
	}
	s := &Store{opts: opts, db: db, writes: make(chan *writeReq, 256), done: make(chan struct{}), readers: map[uint32]*os.File{}}
	if err := s.init(); err != nil {
		_ = db.Close() // the open error is the one to report
		return nil, err
	}
	go s.writer()
	return s, nil
}

// initKeys builds the key ring from the options.
func (s *Store) initKeys() error {
	if s.opts.Key == nil {
		if len(s.opts.PreviousKeys) > 0 {
			return errors.New("ENCRYPTION_PREVIOUS_KEYS is set without ENCRYPTION_KEY")
		}
		return nil
	}
	s.keys = map[uint32]cipher.AEAD{}
	for i, k := range append([][]byte{s.opts.Key}, s.opts.PreviousKeys...) {
		id, err := keyID(k)
		if err != nil {
			return err
		}
		aead, err := newAEAD(k)
		if err != nil {
			return err
		}
		if _, dup := s.keys[id]; dup {
			if i > 0 && bytes.Equal(k, s.opts.Key) {
				continue // the current key listed again
			}
			return fmt.Errorf("two keys of ENCRYPTION_KEY and ENCRYPTION_PREVIOUS_KEYS have the key id %s (the same key twice?)", KeyIDString(id))
		}
		s.keys[id] = aead
		if i == 0 {
			s.aead, s.key = aead, id
		}
	}
	return nil
}

// checkKey opens the index's key check with the ring: with the current
// key it is as it was; with a previous key (a rotation) it is re-sealed
// with the current one. It records the legacy key id once: the key that
// matched when no record could name its key yet.
func (s *Store) checkKey(meta *bolt.Bucket, check []byte) error {
	matched, found := uint32(0), false
	ids := make([]uint32, 0, len(s.keys))
	ids = append(ids, s.key)
	for id := range s.keys {
		if id != s.key {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		if _, err := open(s.keys[id], []byte("key check"), check); err == nil {
			matched, found = id, true
			break
		}
	}
	if !found {
		return ErrWrongKey
	}
	if v := meta.Get(keyLegacyKey); len(v) == 4 {
		s.legacy.Store(binary.BigEndian.Uint32(v))
	} else {
		s.legacy.Store(matched)
		if err := meta.Put(keyLegacyKey, binary.BigEndian.AppendUint32(nil, matched)); err != nil {
			return err
		}
	}
	if matched != s.key {
		return meta.Put(keyKeyCheck, seal(s.aead, []byte("key check"), []byte("lucid data chain")))
	}
	return nil
}

func (s *Store) init() error {
	if err := s.initKeys(); err != nil {
		return err
	}
	var packEnd int64
	packs, err := s.packsOnDisk()
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketChunks, bucketSessions, bucketMembers, bucketRefs, bucketMeta, bucketDamaged, bucketDeadRecords} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := countUsage(tx, packs); err != nil {
			return fmt.Errorf("count each owner's usage: %w", err)
		}
		meta := tx.Bucket(bucketMeta)
		check := meta.Get(keyKeyCheck)
		switch {
		case check == nil && meta.Get(keyActivePack) == nil: // a new store: record its mode
			v := []byte("plain")
			if s.aead != nil {
				v = seal(s.aead, []byte("key check"), []byte("lucid data chain"))
				s.legacy.Store(s.key)
				if err := meta.Put(keyLegacyKey, binary.BigEndian.AppendUint32(nil, s.key)); err != nil {
					return err
				}
			}
			if err := meta.Put(keyKeyCheck, v); err != nil {
				return err
			}
			if err := meta.Put(keyActivePack, binary.BigEndian.AppendUint32(nil, 1)); err != nil {
				return err
			}
		case string(check) == "plain" && s.aead != nil:
			return errors.New("ENCRYPTION_KEY is set, but this data chain was created without encryption")
		case string(check) != "plain" && s.aead == nil:
			return errors.New("this data chain is encrypted; ENCRYPTION_KEY is required")
		case s.aead != nil:
			if err := s.checkKey(meta, check); err != nil {
				return err
			}
		}
		s.activeN = binary.BigEndian.Uint32(meta.Get(keyActivePack))
		if v := meta.Get(keyPackEnd); len(v) == 8 {
			packEnd = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(s.packPath(s.activeN), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	// On failure the pack is left as it was, and the failure is what to
	// report rather than the Close after it.
	if err := atomicfile.SyncDir(s.packDir()); err != nil {
		_ = f.Close()
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return err
	}
	if fi.Size() < packEnd {
		_ = f.Close()
		return fmt.Errorf("%s is %d bytes but the index has records up to %d: the pack was truncated or replaced", s.packPath(s.activeN), fi.Size(), packEnd)
	}
	if fi.Size() > packEnd {
		// Bytes after the last committed record: a crash between the pack
		// write and the index commit. No Put returned for them.
		if err := f.Truncate(packEnd); err != nil {
			_ = f.Close()
			return fmt.Errorf("cut torn tail of %s: %w", s.packPath(s.activeN), err)
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return err
		}
	}
	s.active, s.activeSz = f, packEnd
	return nil
}

func (s *Store) packPath(n uint32) string {
	return filepath.Join(s.opts.Dir, "packs", fmt.Sprintf("pack-%06d.dat", n))
}

// ErrClosed is returned by a Store that is closing.
var ErrClosed = errors.New("chunk store is closed")

// Close stops the writer (after what is queued) and closes every file.
func (s *Store) Close() error {
	s.life.Lock()
	s.closed = true
	close(s.writes)
	s.life.Unlock()
	<-s.done
	s.readMu.Lock()
	for _, f := range s.readers {
		_ = f.Close() // only ever read: no data to lose
	}
	s.readMu.Unlock()
	return errors.Join(s.active.Close(), s.db.Close())
}

// ID returns the id of a chunk: hex SHA-256 of its bytes.
func ID(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// scoped is the index key of name (a chunk or session id) of owner:
// name itself for the empty owner, whose keys are as they were before
// owners existed, else 0x01 ‖ owner ‖ 0x00 ‖ name. Owners hold no control
// characters (auth.CheckSubject) and names are hex or UUIDs, so no key of
// one owner is a prefix of, or equal to, another owner's.
func scoped(owner, name string) string {
	if owner == "" {
		return name
	}
	return "\x01" + owner + "\x00" + name
}

// unscoped splits an index key into its owner and name.
func unscoped(key string) (owner, name string) {
	if rest, ok := strings.CutPrefix(key, "\x01"); ok {
		if o, n, ok := strings.Cut(rest, "\x00"); ok {
			return o, n
		}
	}
	return "", key
}

// Member places a chunk in one of its owner's sessions.
type Member struct {
	Session string
	Index   uint64
}

type writeReq struct {
	id     [sha256.Size]byte
	owner  string
	data   []byte
	member *Member
	// quota, when above 0, bounds what owner's chunks may take with this
	// one if it is new to owner (AddWithin).
	quota uint64
	// raw and from move an existing record (compaction): raw is the whole
	// record, from where it is now.
	raw  []byte
	from *Location
	// closePack asks the writer to start a new active pack (Compact, to
	// re-encrypt what the active one holds).
	closePack bool
	// wrote is set by the writer before it replies: the bytes were new
	// (or repaired) and went to a pack.
	wrote bool
	reply chan error
}

// Put stores data for owner durably (once, whatever the number of Puts)
// and, with m, records it at m.Index of owner's session m.Session. It
// returns the chunk id.
func (s *Store) Put(ctx context.Context, owner string, data []byte, m *Member) (string, error) {
	id, _, err := s.Add(ctx, owner, data, m)
	return id, err
}

// Add is Put that also reports whether the bytes were new to owner
// (false when owner had stored them already: nothing was written).
func (s *Store) Add(ctx context.Context, owner string, data []byte, m *Member) (id string, isNew bool, err error) {
	return s.add(ctx, owner, data, m, 0)
}

func (s *Store) add(ctx context.Context, owner string, data []byte, m *Member, quota uint64) (id string, isNew bool, err error) {
	req := &writeReq{id: sha256.Sum256(data), owner: owner, data: data, member: m, quota: quota, reply: make(chan error, 1)}
	if err := s.enqueue(ctx, req); err != nil {
		return "", false, err
	}
	select {
	case err := <-req.reply:
		return hex.EncodeToString(req.id[:]), req.wrote, err
	case <-ctx.Done():
		// The write may still land; a retry is idempotent.
		return "", false, ctx.Err()
	}
}

// enqueue hands req to the writer unless the store is closing.
func (s *Store) enqueue(ctx context.Context, req *writeReq) error {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return ErrClosed
	}
	select {
	case s.writes <- req:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// batchBytes bounds one group commit.
const batchBytes = 64 << 20

// writer group-commits Puts: it takes what is queued, appends it to the
// active pack in one write, fsyncs, commits the index once, and answers.
func (s *Store) writer() {
	defer close(s.done)
	for req := range s.writes {
		batch := []*writeReq{req}
		size := len(req.data) + len(req.raw)
	more:
		for size < batchBytes && len(batch) < 512 {
			select {
			case r, ok := <-s.writes:
				if !ok {
					break more
				}
				batch = append(batch, r)
				size += len(r.data) + len(r.raw)
			default:
				break more
			}
		}
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*writeReq) {
	// Held from the check to the commit: a Delete in between would leave
	// a session member pointing at a chunk the check saw but the commit
	// does not have.
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	// Which chunks need writing? New ones, and ones a scrub found damaged
	// (an upload of the same bytes repairs them).
	keys := make([]string, len(batch))
	fresh := map[string]bool{}
	// held is true for the fresh chunks the index has (damaged ones);
	// used is what each owner with a quota in the batch has stored.
	held := map[string]bool{}
	used := map[string]Usage{}
	_ = s.db.View(func(tx *bolt.Tx) error {
		chunks, damaged, usage := tx.Bucket(bucketChunks), tx.Bucket(bucketDamaged), tx.Bucket(bucketUsage)
		for i, r := range batch {
			if r.closePack {
				continue
			}
			keys[i] = scoped(r.owner, hex.EncodeToString(r.id[:]))
			k := []byte(keys[i])
			if c := chunks.Get(k); c == nil || damaged.Get(k) != nil {
				fresh[keys[i]] = true
				held[keys[i]] = c != nil
			}
			if _, ok := used[r.owner]; r.quota > 0 && !ok {
				used[r.owner] = usageOf(usage, r.owner)
			}
		}
		return nil
	})
	errs := make([]error, len(batch))
	var buf bytes.Buffer
	locs := map[string]Location{}
	start := s.activeSz
	moved := map[string]Location{}
	for i, r := range batch {
		key := keys[i]
		if r.closePack {
			continue
		}
		if r.raw != nil {
			moved[key] = Location{Pack: s.activeN, Offset: start + int64(buf.Len()), Length: uint32(len(r.raw))}
			buf.Write(r.raw)
			continue
		}
		if !fresh[key] {
			continue
		}
		if _, done := locs[key]; done {
			continue
		}
		off := start + int64(buf.Len())
		// A record is its header and its payload, written one after the
		// other (a chunk is up to 64 MiB: not copied to join them).
		var header, payload []byte
		if s.aead != nil {
			ad := sealAD(r.id, s.key)
			payload = seal(s.aead, ad[:], r.data)
			var h [headerSize2]byte
			encodeHeader2(h[:], r.id, flagEncrypted, s.key, payload)
			header = h[:]
		} else {
			var h [headerSize]byte
			encodeHeader(h[:], r.id, 0, r.data)
			header, payload = h[:], r.data
		}
		n := uint64(len(header) + len(payload))
		if r.quota > 0 && !held[key] {
			u := used[r.owner]
			if !u.fits(n, r.quota) {
				errs[i] = &QuotaError{Usage: u, Quota: r.quota, Record: n}
				continue
			}
			u.Bytes += n
			used[r.owner] = u
		}
		r.wrote = true
		buf.Write(header)
		buf.Write(payload)
		locs[key] = Location{Pack: s.activeN, Offset: off, Length: uint32(n)}
	}
	fail := func(err error) {
		for _, r := range batch {
			r.reply <- err
		}
	}
	if buf.Len() > 0 {
		if _, err := s.active.WriteAt(buf.Bytes(), start); err != nil {
			fail(fmt.Errorf("write pack: %w", err))
			return
		}
		if err := s.active.Sync(); err != nil {
			fail(fmt.Errorf("sync pack: %w", err))
			return
		}
	}
	end := start + int64(buf.Len())
	err := s.db.Update(func(tx *bolt.Tx) error {
		chunks, meta := tx.Bucket(bucketChunks), tx.Bucket(bucketMeta)
		for key, loc := range locs {
			k := []byte(key)
			size, count := int64(loc.Length), int64(1)
			owner, _ := unscoped(key)
			if v := chunks.Get(k); len(v) == 16 { // a repair replaces its record
				old := decodeLocation(v)
				size, count = size-int64(old.Length), 0
				if err := markDead(tx, owner, old); err != nil {
					return err
				}
			}
			if err := changeUsage(tx, owner, size, count, 0); err != nil {
				return err
			}
			if err := chunks.Put(k, loc.encode()); err != nil {
				return err
			}
			if err := tx.Bucket(bucketDamaged).Delete(k); err != nil {
				return err
			}
		}
		for i, r := range batch {
			// A moved record takes over only if the chunk is still where
			// the compactor found it (not deleted or moved meanwhile).
			if r.from != nil {
				key := []byte(keys[i])
				if v := chunks.Get(key); len(v) == 16 && decodeLocation(v) == *r.from {
					to := moved[keys[i]]
					if err := chunks.Put(key, to.encode()); err != nil {
						return err
					}
					// Re-encrypting an old record may change its length.
					if err := changeUsage(tx, r.owner, int64(to.Length)-int64(r.from.Length), 0, 0); err != nil {
						return err
					}
				}
			}
		}
		for i, r := range batch {
			if r.member != nil && errs[i] == nil {
				errs[i] = addMember(tx, r.owner, hex.EncodeToString(r.id[:]), *r.member, s.opts.MaxSessionChunks)
			}
		}
		return meta.Put(keyPackEnd, binary.BigEndian.AppendUint64(nil, uint64(end)))
	})
	if err != nil {
		fail(fmt.Errorf("commit index: %w", err))
		return
	}
	s.mu.Lock()
	s.activeSz = end
	s.mu.Unlock()
	var closers []*writeReq
	for i, r := range batch {
		if r.closePack {
			closers = append(closers, r)
			continue
		}
		r.reply <- errs[i]
	}
	var rerr error
	if s.activeSz >= s.opts.MaxPackBytes || (len(closers) > 0 && s.activeSz > 0) {
		// On failure the active pack just keeps growing; reads are
		// unaffected, and a Compact that asked is told.
		rerr = s.rotate()
	}
	for _, r := range closers {
		r.reply <- rerr
	}
}

// rotate starts a new active pack.
func (s *Store) rotate() error {
	next := s.activeN + 1
	f, err := os.OpenFile(s.packPath(next), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := atomicfile.SyncDir(s.packDir()); err != nil {
		_ = f.Close() // the new pack is unused; the failure is what to report
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyActivePack, binary.BigEndian.AppendUint32(nil, next)); err != nil {
			return err
		}
		return meta.Put(keyPackEnd, binary.BigEndian.AppendUint64(nil, 0))
	})
	if err != nil {
		_ = f.Close() // the new pack is unused; the failure is what to report
		return err
	}
	s.mu.Lock()
	old := s.active
	s.active, s.activeN, s.activeSz = f, next, 0
	s.mu.Unlock()
	return old.Close()
}

// Get returns the bytes of owner's chunk id, verified: a damaged record or
// a hash mismatch is an error wrapping ErrCorrupt, never data.
func (s *Store) Get(owner, id string) ([]byte, error) {
	loc, err := s.Locate(owner, id)
	if err != nil {
		return nil, err
	}
	data, err := s.read(id, loc)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, os.ErrClosed) {
		// Compaction moved the chunk and removed its old pack between the
		// lookup and the read: look again.
		if loc, err = s.Locate(owner, id); err != nil {
			return nil, err
		}
		data, err = s.read(id, loc)
	}
	if errors.Is(err, ErrCorrupt) {
		// Found by a read, it is recorded as a scrub records it, so that
		// the client told to upload the same bytes again repairs it
		// (commit rewrites a damaged chunk, and skips any other it has).
		if merr := s.markDamaged(owner, id, loc); merr != nil {
			return nil, errors.Join(err, merr)
		}
	}
	return data, err
}

// markDamaged records owner's chunk id damaged, unless it has moved from
// loc (repaired or compacted) since it was read there.
func (s *Store) markDamaged(owner, id string, loc Location) error {
	k := []byte(scoped(owner, id))
	var marked bool
	_ = s.db.View(func(tx *bolt.Tx) error { marked = tx.Bucket(bucketDamaged).Get(k) != nil; return nil })
	if marked {
		return nil // each read of a damaged chunk need not write it down again
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketChunks).Get(k); len(v) != 16 || decodeLocation(v) != loc {
			return nil
		}
		return tx.Bucket(bucketDamaged).Put(k, nil)
	})
	if err != nil {
		return fmt.Errorf("record damaged chunk %s: %w", id, err)
	}
	return nil
}

// Locate returns where owner's chunk id is stored.
func (s *Store) Locate(owner, id string) (Location, error) {
	var loc Location
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketChunks).Get([]byte(scoped(owner, id)))
		if len(v) != 16 {
			return ErrNotFound
		}
		loc = decodeLocation(v)
		return nil
	})
	return loc, err
}

// Has reports whether owner has chunk id stored.
func (s *Store) Has(owner, id string) bool {
	_, err := s.Locate(owner, id)
	return err == nil
}

func (s *Store) reader(pack uint32) (*os.File, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if f, ok := s.readers[pack]; ok {
		return f, nil
	}
	f, err := os.Open(s.packPath(pack))
	if err != nil {
		return nil, err
	}
	s.readers[pack] = f
	return f, nil
}

func (s *Store) read(id string, loc Location) ([]byte, error) {
	f, err := s.reader(loc.Pack)
	if err != nil {
		return nil, err
	}
	rec := make([]byte, loc.Length)
	if _, err := f.ReadAt(rec, loc.Offset); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read chunk %s: %w", id, err)
	}
	r, err := decodeRecord(rec)
	if err != nil {
		return nil, fmt.Errorf("chunk %s in pack %d at %d: %w", id, loc.Pack, loc.Offset, err)
	}
	data, err := s.plaintext(r)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != id || got != r.id {
		return nil, fmt.Errorf("chunk %s: %w: its bytes hash to %x", id, ErrCorrupt, got)
	}
	return data, nil
}

// sealedWith returns the id of the key that sealed r, and whether r is
// encrypted at all.
func (s *Store) sealedWith(r record) (uint32, bool) {
	switch {
	case r.flags&flagEncrypted == 0:
		return 0, false
	case r.versioned:
		return r.key, true
	default:
		return s.legacy.Load(), true
	}
}

// plaintext returns r's payload, opened with the key that sealed it.
func (s *Store) plaintext(r record) ([]byte, error) {
	kid, encrypted := s.sealedWith(r)
	if !encrypted {
		return r.payload, nil
	}
	if s.keys == nil {
		return nil, errors.New("encrypted, and no key is set")
	}
	aead, ok := s.keys[kid]
	if !ok {
		return nil, fmt.Errorf("%w: key id %s", ErrUnknownKey, KeyIDString(kid))
	}
	if !r.versioned {
		return open(aead, r.id[:], r.payload)
	}
	ad := sealAD(r.id, kid)
	return open(aead, ad[:], r.payload)
}
