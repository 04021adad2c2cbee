package sshx

import (
	"io"
	"sync"

	"golang.org/x/crypto/ssh"
)

// signedBy records the key that signed the authentication the server
// accepted. The client signs only after the server said it would accept
// the key (publickey's query without a signature comes first), so the
// last key that signed during a successful handshake is the one that
// authenticated.
type signedBy struct {
	mu sync.Mutex
	fp string
}

func (s *signedBy) set(k ssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fp = ssh.FingerprintSHA256(k)
}

func (s *signedBy) get() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fp
}

// wrap returns signers that record themselves in s when they sign. What
// a signer offers beyond Sign (the RSA SHA-2 algorithms) is kept, so the
// negotiation is the same as with the bare signers.
func (s *signedBy) wrap(signers []ssh.Signer) []ssh.Signer {
	out := make([]ssh.Signer, len(signers))
	for i, sg := range signers {
		r := recordingSigner{Signer: sg, by: s}
		switch as := sg.(type) {
		case ssh.MultiAlgorithmSigner:
			out[i] = &recordingMultiSigner{recordingAlgSigner{r, as}, as}
		case ssh.AlgorithmSigner:
			out[i] = &recordingAlgSigner{r, as}
		default:
			out[i] = &r
		}
	}
	return out
}

type recordingSigner struct {
	ssh.Signer
	by *signedBy
}

func (r *recordingSigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	sig, err := r.Signer.Sign(rand, data)
	if err == nil {
		r.by.set(r.PublicKey())
	}
	return sig, err
}

type recordingAlgSigner struct {
	recordingSigner
	alg ssh.AlgorithmSigner
}

func (r *recordingAlgSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	sig, err := r.alg.SignWithAlgorithm(rand, data, algorithm)
	if err == nil {
		r.by.set(r.PublicKey())
	}
	return sig, err
}

type recordingMultiSigner struct {
	recordingAlgSigner
	multi ssh.MultiAlgorithmSigner
}

func (r *recordingMultiSigner) Algorithms() []string { return r.multi.Algorithms() }

var (
	_ ssh.Signer               = (*recordingSigner)(nil)
	_ ssh.AlgorithmSigner      = (*recordingAlgSigner)(nil)
	_ ssh.MultiAlgorithmSigner = (*recordingMultiSigner)(nil)
)
