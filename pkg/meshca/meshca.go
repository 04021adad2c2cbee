// Package meshca is Lucid's mesh certificate authority: an EC P-256 root
// and intermediate kept in a directory, leaf certificates that name a
// service by its SPIFFE ID (spiffe://lucid/service/<name>), and root
// rotation by cross-signing.
//
// The root key signs only intermediates (and, on rotation, its successor);
// leaves are signed by the intermediate. A rotation makes a new root and
// intermediate and cross-signs the new root with the old one: leaves issued
// after it carry the cross certificate in their chain, so a peer that still
// trusts only the old root accepts them, while a peer that already has the
// new bundle accepts them directly. The old root stays in the trust bundle
// until every leaf it could have signed has expired.
//
// A seed is a CA directory made elsewhere (by Open: ca.json and the
// bundle) that several controllers start from, so that they share one
// root: the CA of a cluster, shipped to each of its Pis. A CA started on
// its own adopts a seed the way a rotation replaces a root: its old root is
// kept in the bundle, and cross-signs the seed's, until its leaves expire.
package meshca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/pkg/envfile"
)

// TrustDomain is the SPIFFE trust domain of every Lucid identity.
const TrustDomain = "lucid"

// Lifetimes. Leaves are short-lived and renewed by their holders; the
// intermediate is re-issued from the root when it gets close to its end.
const (
	DefaultLeafTTL   = 72 * time.Hour
	rootTTL          = 10 * 365 * 24 * time.Hour
	intermediateTTL  = 365 * 24 * time.Hour
	backdate         = time.Minute // tolerates small clock skew between Pis
	maxServiceLength = 63
)

var serviceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// SPIFFEID is the identity of the service called name.
func SPIFFEID(name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: "/service/" + name}
}

// ServiceOf returns the service a certificate names by its SPIFFE ID, and
// false if it carries no Lucid identity.
func ServiceOf(cert *x509.Certificate) (string, bool) {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && u.Host == TrustDomain && strings.HasPrefix(u.Path, "/service/") {
			name := strings.TrimPrefix(u.Path, "/service/")
			if serviceName.MatchString(name) {
				return name, true
			}
		}
	}
	return "", false
}

// ValidServiceName reports whether name can be a mesh identity.
func ValidServiceName(name string) error {
	if len(name) > maxServiceLength || !serviceName.MatchString(name) {
		return fmt.Errorf("service name %q: use 1 to %d lower-case letters, digits and dashes", name, maxServiceLength)
	}
	return nil
}

// Options tune a CA.
type Options struct {
	// LeafTTL is the lifetime of issued leaves (default 72 h).
	LeafTTL time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// Leaf is an issued certificate with the chain a holder presents.
type Leaf struct {
	// Chain is the leaf first, then the intermediates a peer needs
	// (including a cross-signed root during a rotation).
	Chain []*x509.Certificate
	// NotAfter is the leaf's expiry.
	NotAfter time.Time
}

// ChainPEM is the chain as concatenated PEM blocks.
func (l Leaf) ChainPEM() []byte { return EncodeCerts(l.Chain) }

// CA is an open mesh certificate authority. It is safe for concurrent use.
type CA struct {
	dir  string
	opts Options

	mu sync.RWMutex
	authority
}

// authority is the CA's keys and certificates: what ca.json holds. A
// change is built as a new value, saved, and only then swapped in, so the
// CA never signs with keys that are not on disk.
type authority struct {
	root   *x509.Certificate
	rootK  *ecdsa.PrivateKey
	inter  *x509.Certificate
	interK *ecdsa.PrivateKey
	// crosses certify the current root's key under roots it replaced
	// (a rotation's predecessor, or the local root a seed displaced): a
	// leaf carries those whose signer is still in the bundle, so a peer
	// that trusts only that older root accepts it.
	crosses []*x509.Certificate
	trust   []trusted
}

// trusted is a root in the bundle and how long it stays there.
type trusted struct {
	cert  *x509.Certificate
	until time.Time // zero: the current root, trusted while it is current
}

// Files in the CA directory. The state is one JSON file, written
// atomically and 0600 (it holds both keys), so a crash in the middle of a
// rotation leaves the old CA or the new one, never half of each. The bundle
// is an export for operators and sidecars; it is never read back.
const (
	stateFile  = "ca.json"
	bundleFile = "bundle.pem"
)

// Open loads the CA kept in dir, creating a new root and intermediate on
// first use.
func Open(ctx context.Context, dir string, opts Options) (*CA, error) {
	if opts.LeafTTL <= 0 {
		opts.LeafTTL = DefaultLeafTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mesh CA directory: %w", err)
	}
	ca := &CA{dir: dir, opts: opts}
	_, err := os.Stat(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := ca.create(ctx); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("mesh CA: %w", err)
	default:
		if err := ca.load(); err != nil {
			return nil, fmt.Errorf("mesh CA in %s: %w", dir, err)
		}
	}
	if err := ca.refreshIntermediate(); err != nil {
		return nil, err
	}
	return ca, nil
}

func (ca *CA) create(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	root, rootK, err := newRoot(ca.opts.Now())
	if err != nil {
		return err
	}
	inter, interK, err := newIntermediate(ca.opts.Now(), root, rootK)
	if err != nil {
		return err
	}
	next := authority{root: root, rootK: rootK, inter: inter, interK: interK, trust: []trusted{{cert: root}}}
	if err := ca.save(next); err != nil {
		return err
	}
	ca.authority = next
	return nil
}

// Rotate replaces the root: a new root and intermediate, the new root
// cross-signed by the old one, and both roots trusted until every leaf the
// old one vouched for has expired.
func (ca *CA) Rotate(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.opts.Now()
	// A second rotation inside the overlap would leave peers that have not
	// renewed since the first one without a path to the newest root.
	for _, t := range ca.trust {
		if !t.until.IsZero() && t.until.After(now) {
			return &RotationInProgressError{Until: t.until}
		}
	}
	root, rootK, err := newRoot(now)
	if err != nil {
		return err
	}
	cross, err := crossSign(now, rootK, ca.root, ca.rootK)
	if err != nil {
		return err
	}
	inter, interK, err := newIntermediate(now, root, rootK)
	if err != nil {
		return err
	}
	// The old root is kept for the lifetime of a leaf issued just now by
	// its intermediate, plus the backdating slack.
	overlap := now.Add(ca.opts.LeafTTL + backdate)
	var trust []trusted
	for _, t := range ca.trust {
		if t.until.IsZero() {
			t.until = overlap
		}
		if t.until.After(now) {
			trust = append(trust, t)
		}
	}
	next := authority{root: root, rootK: rootK, inter: inter, interK: interK, crosses: []*x509.Certificate{cross}, trust: append(trust, trusted{cert: root})}
	if err := ca.save(next); err != nil {
		return err
	}
	ca.authority = next
	return nil
}

// RequestError is a certificate request the CA refuses; any other Sign
// error is the CA's own.
type RequestError struct{ Reason string }

func (e *RequestError) Error() string { return e.Reason }

// RotationInProgressError refuses a rotation while the previous root is
// still trusted.
type RotationInProgressError struct{ Until time.Time }

func (e *RotationInProgressError) Error() string {
	return "a root rotation is already in progress; the previous root is trusted until " + e.Until.UTC().Format(time.RFC3339)
}

// Sign issues a leaf for service from a certificate request. The request
// must be signed by an EC P-256 key (the key never leaves its holder); its
// subject and names are ignored: the leaf names the service and nothing
// else.
func (ca *CA) Sign(ctx context.Context, csr *x509.CertificateRequest, service string) (Leaf, error) {
	if err := ctx.Err(); err != nil {
		return Leaf{}, err
	}
	if err := ValidServiceName(service); err != nil {
		return Leaf{}, &RequestError{err.Error()}
	}
	if err := csr.CheckSignature(); err != nil {
		return Leaf{}, &RequestError{"certificate request signature: " + err.Error()}
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return Leaf{}, &RequestError{"certificate request: the key must be EC P-256"}
	}
	if err := ca.refreshIntermediate(); err != nil {
		return Leaf{}, err
	}
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.opts.Now()
	notAfter := now.Add(ca.opts.LeafTTL)
	if notAfter.After(ca.inter.NotAfter) {
		notAfter = ca.inter.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: service, Organization: []string{"Lucid mesh"}},
		URIs:                  []*url.URL{SPIFFEID(service)},
		DNSNames:              []string{service},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, pub, ca.interK)
	if err != nil {
		return Leaf{}, fmt.Errorf("sign leaf: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return Leaf{}, err
	}
	chain := append([]*x509.Certificate{leaf, ca.inter}, ca.crossesLocked(now)...)
	return Leaf{Chain: chain, NotAfter: leaf.NotAfter}, nil
}

// Bundle returns the roots a peer must trust now: the current root and,
// during a rotation, its predecessor.
func (ca *CA) Bundle() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.opts.Now()
	var out []*x509.Certificate
	for _, t := range ca.trust {
		if t.until.IsZero() || t.until.After(now) {
			out = append(out, t.cert)
		}
	}
	return out
}

// Fingerprint is the hex SHA-256 of the current root, for operators to
// compare.
func (ca *CA) Fingerprint() string {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return fingerprint(ca.root)
}

func fingerprint(root *x509.Certificate) string {
	sum := sha256.Sum256(root.Raw)
	return hex.EncodeToString(sum[:])
}

// crossesLocked are the cross certificates whose signer is a previous root
// still in the bundle at now.
func (ca *CA) crossesLocked(now time.Time) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range ca.crosses {
		if slices.ContainsFunc(ca.trust, func(t trusted) bool {
			return !t.until.IsZero() && t.until.After(now) && signedBy(c, t.cert)
		}) {
			out = append(out, c)
		}
	}
	return out
}

// signedBy reports whether parent names c's issuer: subject and key id.
// Only roots this CA made or adopted are compared, so names suffice.
func signedBy(c, parent *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, parent.RawSubject) && bytes.Equal(c.AuthorityKeyId, parent.SubjectKeyId)
}

// refreshIntermediate re-issues the intermediate from the root when less
// than two leaf lifetimes of it remain, so a leaf is never cut short.
func (ca *CA) refreshIntermediate() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.opts.Now()
	if ca.inter.NotAfter.Sub(now) > 2*ca.opts.LeafTTL {
		return nil
	}
	inter, interK, err := newIntermediate(now, ca.root, ca.rootK)
	if err != nil {
		return err
	}
	next := ca.authority
	next.inter, next.interK = inter, interK
	if err := ca.save(next); err != nil {
		return err
	}
	ca.authority = next
	return nil
}

// newRoot makes a fresh key and its self-signed root certificate.
func newRoot(now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert, err := rootCert(now, key, nil, key)
	return cert, key, err
}

// crossSign certifies root's key (same subject and key id) under parent:
// the cross certificate of a rotation.
func crossSign(now time.Time, rootKey *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	return rootCert(now, rootKey, parent, parentKey)
}

// rootCert certifies key as a root CA, signed by parent (nil: itself).
func rootCert(now time.Time, key *ecdsa.PrivateKey, parent *x509.Certificate, signerKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	skid, err := keyID(key.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Lucid mesh root " + hex.EncodeToString(skid[:4]), Organization: []string{"Lucid mesh"}},
		SubjectKeyId:          skid,
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(rootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            2, // root → cross → intermediate → leaf
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	return x509.ParseCertificate(der)
}

func newIntermediate(now time.Time, root *x509.Certificate, rootK *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	skid, err := keyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(intermediateTTL)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "Lucid mesh intermediate " + hex.EncodeToString(skid[:4]), Organization: []string{"Lucid mesh"}},
		SubjectKeyId:          skid,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: TrustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootK)
	if err != nil {
		return nil, nil, fmt.Errorf("create intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// state is the content of ca.json.
type state struct {
	RootKey          string `json:"root_key"`
	RootCert         string `json:"root_cert"`
	IntermediateKey  string `json:"intermediate_key"`
	IntermediateCert string `json:"intermediate_cert"`
	// CrossCert holds the cross certificates as concatenated PEM (one,
	// after a rotation; more after adopting a seed during its rotation).
	CrossCert string        `json:"cross_cert,omitempty"`
	Trust     []trustRecord `json:"trust"`
}

// trustRecord is one root of the bundle.
type trustRecord struct {
	Cert  string    `json:"cert"`
	Until time.Time `json:"until,omitzero"`
}

func pemOf(c *x509.Certificate) string { return string(EncodeCerts([]*x509.Certificate{c})) }

// save writes a's state, then the exported bundle.
func (ca *CA) save(a authority) error {
	st := state{RootCert: pemOf(a.root), IntermediateCert: pemOf(a.inter)}
	var err error
	if st.RootKey, err = encodeKey(a.rootK); err != nil {
		return err
	}
	if st.IntermediateKey, err = encodeKey(a.interK); err != nil {
		return err
	}
	if len(a.crosses) > 0 {
		st.CrossCert = string(EncodeCerts(a.crosses))
	}
	var bundle []*x509.Certificate
	for _, t := range a.trust {
		st.Trust = append(st.Trust, trustRecord{Cert: pemOf(t.cert), Until: t.until})
		bundle = append(bundle, t.cert)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := envfile.WriteAtomic(filepath.Join(ca.dir, stateFile), data); err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	if err := envfile.WriteAtomic(filepath.Join(ca.dir, bundleFile), EncodeCerts(bundle)); err != nil {
		return fmt.Errorf("mesh CA: %w", err)
	}
	return nil
}

func (ca *CA) load() error {
	data, err := os.ReadFile(filepath.Join(ca.dir, stateFile))
	if err != nil {
		return err
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	field := func(name string, f func() error) {
		if err == nil {
			if ferr := f(); ferr != nil {
				err = fmt.Errorf("%s: %s: %w", stateFile, name, ferr)
			}
		}
	}
	field("root_key", func() (e error) { ca.rootK, e = decodeKey(st.RootKey); return })
	field("intermediate_key", func() (e error) { ca.interK, e = decodeKey(st.IntermediateKey); return })
	field("root_cert", func() (e error) { ca.root, e = decodeOne([]byte(st.RootCert)); return })
	field("intermediate_cert", func() (e error) { ca.inter, e = decodeOne([]byte(st.IntermediateCert)); return })
	if st.CrossCert != "" {
		field("cross_cert", func() (e error) { ca.crosses, e = DecodeCerts([]byte(st.CrossCert)); return })
	}
	for _, r := range st.Trust {
		field("trust", func() error {
			c, e := decodeOne([]byte(r.Cert))
			ca.trust = append(ca.trust, trusted{cert: c, until: r.Until})
			return e
		})
	}
	if err != nil {
		return err
	}
	if !ca.rootK.PublicKey.Equal(ca.root.PublicKey) || !ca.interK.PublicKey.Equal(ca.inter.PublicKey) {
		return errors.New("a key does not match its certificate")
	}
	if err := ca.inter.CheckSignatureFrom(ca.root); err != nil {
		return fmt.Errorf("the intermediate is not signed by the root: %w", err)
	}
	if !slices.ContainsFunc(ca.trust, func(t trusted) bool { return t.cert.Equal(ca.root) }) {
		return errors.New("the trust list does not hold the current root")
	}
	return nil
}

// ParseCSR parses a PEM certificate request.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: not a PEM CERTIFICATE REQUEST")
	}
	return x509.ParseCertificateRequest(block.Bytes)
}

// EncodeCerts returns certs as concatenated PEM blocks.
func EncodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// DecodeCerts parses concatenated PEM certificates; anything else in the
// input is an error.
func DecodeCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if strings.TrimSpace(string(data)) != "" {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func decodeOne(data []byte) (*x509.Certificate, error) {
	certs, err := DecodeCerts(data)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("want one certificate, found %d", len(certs))
	}
	return certs[0], nil
}

func encodeKey(k *ecdsa.PrivateKey) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

func decodeKey(data string) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode([]byte(data))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an EC key")
	}
	return ek, nil
}
