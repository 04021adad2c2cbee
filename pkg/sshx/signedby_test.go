package sshx

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/pickme/lucid/internal/testenv"
)

// TestKeyFingerprint: the connection knows which key authenticated it, a
// key file's (after a key the server refuses) and an ssh-agent's alike.
func TestKeyFingerprint(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	pem, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.ParseRawPrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	want := ssh.FingerprintSHA256(signer.PublicKey())

	// A key the server does not know comes first: it never signs.
	c, err := dial(t, s, Options{KeyFiles: []string{testenv.NewKeyFile(t), s.ClientKey}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.KeyFingerprint(); got != want {
		t.Errorf("key file: fingerprint %q, want %q", got, want)
	}

	kr := agent.NewKeyring()
	if err := kr.Add(agent.AddedKey{PrivateKey: key}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(kr, conn); conn.Close() }()
		}
	}()
	getenv := func(k string) string {
		if k == "SSH_AUTH_SOCK" {
			return sock
		}
		return os.Getenv(k)
	}
	ac, err := Dial(context.Background(), Target{Host: s.Host, Port: s.Port, User: s.User},
		Options{KeyFiles: []string{filepath.Join(t.TempDir(), "none")}, KnownHosts: s.KnownHosts, ConfigFile: "none", Getenv: getenv})
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if got := ac.KeyFingerprint(); got != want {
		t.Errorf("agent: fingerprint %q, want %q", got, want)
	}
}
