package chain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// OriginPrefix starts every checkpoint origin: lucid.chain/<chain-id>.
const OriginPrefix = "lucid.chain/"

// Origin returns the checkpoint origin of chain id.
func Origin(chainID string) string { return OriginPrefix + chainID }

// ZeroHash is the previous-block hash of the first block.
var ZeroHash = strings.Repeat("0", 64)

// Header is a block header. Its body is a C2SP tlog checkpoint (origin,
// tree size, root) followed by extension lines:
//
//	lucid.chain/<chain-id>
//	<tree size>
//	<base64 root>
//	height <n>
//	prev <hex sha-256 of the previous header body>
//	time <RFC 3339 UTC, the block's slot>
//	txs <transactions in the block>
//	proposer <validator key name>
type Header struct {
	Origin   string
	TreeSize uint64
	Root     []byte
	Height   uint64
	Prev     string
	Time     time.Time
	TxCount  int
	Proposer string
}

// Body returns the header's note text.
func (h *Header) Body() []byte {
	var b bytes.Buffer
	b.Write(log.Checkpoint{Origin: h.Origin, Size: h.TreeSize, Hash: h.Root}.Marshal())
	fmt.Fprintf(&b, "height %d\nprev %s\ntime %s\ntxs %d\nproposer %s\n",
		h.Height, h.Prev, h.Time.UTC().Format(time.RFC3339Nano), h.TxCount, h.Proposer)
	return b.Bytes()
}

// Hash is the block hash: hex SHA-256 of the header body. It does not
// cover signatures, so a co-signature does not change a block's identity.
func (h *Header) Hash() string {
	sum := sha256.Sum256(h.Body())
	return hex.EncodeToString(sum[:])
}

// ParseHeaderBody parses a header body strictly: every line present, in
// order, canonical.
func ParseHeaderBody(body []byte) (*Header, error) {
	var cp log.Checkpoint
	rest, err := cp.Unmarshal(body)
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if !strings.HasPrefix(cp.Origin, OriginPrefix) {
		return nil, fmt.Errorf("header: origin %q does not start with %s", cp.Origin, OriginPrefix)
	}
	if len(cp.Hash) != sha256.Size {
		return nil, fmt.Errorf("header: root is %d bytes, want 32", len(cp.Hash))
	}
	h := &Header{Origin: cp.Origin, TreeSize: cp.Size, Root: cp.Hash}
	lines := strings.Split(string(rest), "\n")
	if len(lines) != 6 || lines[5] != "" {
		return nil, errors.New("header: want five extension lines (height, prev, time, txs, proposer)")
	}
	field := func(i int, name string) (string, error) {
		v, ok := strings.CutPrefix(lines[i], name+" ")
		if !ok || v == "" {
			return "", fmt.Errorf("header: line %d: want %q", 4+i, name+" ...")
		}
		return v, nil
	}
	v, err := field(0, "height")
	if err == nil {
		h.Height, err = strconv.ParseUint(v, 10, 64)
	}
	if err != nil {
		return nil, fmt.Errorf("header: height: %w", err)
	}
	if h.Prev, err = field(1, "prev"); err != nil {
		return nil, err
	}
	if !hex64.MatchString(h.Prev) {
		return nil, errors.New("header: prev is not 64 lower-case hex characters")
	}
	if v, err = field(2, "time"); err != nil {
		return nil, err
	}
	if h.Time, err = time.Parse(time.RFC3339Nano, v); err != nil {
		return nil, fmt.Errorf("header: time: %w", err)
	}
	if v, err = field(3, "txs"); err != nil {
		return nil, err
	}
	if h.TxCount, err = strconv.Atoi(v); err != nil || h.TxCount < 0 {
		return nil, fmt.Errorf("header: txs %q is not a count", v)
	}
	if h.Proposer, err = field(4, "proposer"); err != nil {
		return nil, err
	}
	if !bytes.Equal(h.Body(), body) {
		return nil, errors.New("header: not in canonical form")
	}
	return h, nil
}

// SignHeader signs h as a note with signer.
func SignHeader(h *Header, signer note.Signer) ([]byte, error) {
	if h.Proposer != signer.Name() {
		return nil, fmt.Errorf("header proposer %q is not the signer %q", h.Proposer, signer.Name())
	}
	return note.Sign(&note.Note{Text: string(h.Body())}, signer)
}

// ErrSignature reports a checkpoint not signed by a known validator.
var ErrSignature = errors.New("checkpoint is not signed by a known validator")

// OpenHeader verifies a signed header with the validators' keys and parses
// it. The proposer named in the header must be among the signers.
func OpenHeader(signed []byte, validators note.Verifiers) (*Header, error) {
	n, err := note.Open(signed, validators)
	if err != nil {
		var unknown *note.UnverifiedNoteError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("%w (signed by %s)", ErrSignature, signerNames(unknown.Note))
		}
		var invalid *note.InvalidSignatureError
		if errors.As(err, &invalid) {
			return nil, fmt.Errorf("%w: the signature does not match the text (altered checkpoint)", ErrSignature)
		}
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	h, err := ParseHeaderBody([]byte(n.Text))
	if err != nil {
		return nil, err
	}
	for _, s := range n.Sigs {
		if s.Name == h.Proposer {
			return h, nil
		}
	}
	return nil, fmt.Errorf("%w: the proposer %s did not sign it", ErrSignature, h.Proposer)
}

func signerNames(n *note.Note) string {
	if n == nil || len(n.UnverifiedSigs) == 0 {
		return "nobody"
	}
	var names []string
	for _, s := range n.UnverifiedSigs {
		names = append(names, fmt.Sprintf("%s (%08x)", s.Name, s.Hash))
	}
	return strings.Join(names, ", ")
}
