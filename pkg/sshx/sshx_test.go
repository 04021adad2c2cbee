package sshx

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/pickme/lucid/internal/testenv"
)

func dial(t *testing.T, s *testenv.SSHD, o Options) (*Client, error) {
	t.Helper()
	if o.KnownHosts == "" {
		o.KnownHosts = s.KnownHosts
	}
	if len(o.KeyFiles) == 0 {
		o.KeyFiles = []string{s.ClientKey}
	}
	o.NoAgent, o.ConfigFile = true, "none"
	c, err := Dial(context.Background(), Target{Host: s.Host, Port: s.Port, User: s.User}, o)
	if err == nil {
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
	return c, err
}

func TestRunAndWriteFile(t *testing.T) {
	for _, noSFTP := range []bool{false, true} {
		name := "sftp"
		if noSFTP {
			name = "without sftp"
		}
		t.Run(name, func(t *testing.T) {
			s := testenv.StartSSHD(t, testenv.SSHDOptions{NoSFTP: noSFTP})
			c, err := dial(t, s, Options{})
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.Run(context.Background(), "echo hello; echo oops >&2", nil)
			if err != nil || strings.TrimSpace(string(out)) != "hello" {
				t.Fatalf("Run = %q, %v", out, err)
			}
			var ee *ExitError
			if _, err := c.Run(context.Background(), "echo broken >&2; exit 3", nil); !errors.As(err, &ee) || ee.Code != 3 || !strings.Contains(ee.Stderr, "broken") {
				t.Fatalf("failing command: %v", err)
			}
			dst := filepath.Join(t.TempDir(), "sub dir", "it's.env")
			data := []byte("JWT_SECRET_KEY=abc\n")
			if err := c.WriteFile(context.Background(), dst, data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			fi, _ := os.Stat(dst)
			if err != nil || string(got) != string(data) || fi.Mode().Perm() != 0o600 {
				t.Fatalf("written file: %q %v mode %v", got, err, fi.Mode())
			}
			if _, err := os.Stat(dst + ".lucid-tmp"); !errors.Is(err, os.ErrNotExist) {
				t.Error("the temporary file was left behind")
			}
		})
	}
}

// TestCutWriteKeepsTheFile: a transfer that ends early (the connection
// cut, lucidctl killed) only closes the remote command's input, which cat
// takes for the file's end; the file keeps its old content rather than
// become the part that arrived.
func TestCutWriteKeepsTheFile(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{NoSFTP: true})
	c, err := dial(t, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "lucid.env")
	old := []byte("JWT_SECRET_KEY=old\n")
	if err := c.WriteFile(context.Background(), dst, old, 0o600); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("LUCID_SERVICE_KEY=new\n"), 1000)
	cut := io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(errors.New("connection lost")))
	err = c.writeCommand(context.Background(), dst, cut, len(data), 0o600)
	if err == nil {
		t.Fatal("a cut transfer reported success")
	}
	if got, rerr := os.ReadFile(dst); rerr != nil || !bytes.Equal(got, old) {
		t.Fatalf("after a cut transfer the file holds %d bytes (%v), want its old %d", len(got), rerr, len(old))
	}
	if _, err := os.Stat(dst + ".lucid-tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Error("the cut transfer's part was left behind")
	}
}

func TestRefusals(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	t.Run("unknown host key", func(t *testing.T) {
		empty := filepath.Join(t.TempDir(), "known_hosts")
		_, err := dial(t, s, Options{KnownHosts: empty})
		var hk *HostKeyError
		if !errors.Is(err, ErrUnknownHostKey) || !errors.As(err, &hk) || !strings.HasPrefix(hk.Fingerprint, "SHA256:") {
			t.Fatalf("unknown host: %v", err)
		}
		// --accept-new-host-key records it, and the next dial trusts it.
		if _, err := dial(t, s, Options{KnownHosts: empty, AcceptNewHostKey: true}); err != nil {
			t.Fatalf("accepting a new key: %v", err)
		}
		if _, err := dial(t, s, Options{KnownHosts: empty}); err != nil {
			t.Fatalf("after recording the key: %v", err)
		}
	})
	t.Run("changed host key", func(t *testing.T) {
		other := testenv.StartSSHD(t, testenv.SSHDOptions{})
		// A known_hosts that names this address with another server's key.
		kh := filepath.Join(t.TempDir(), "known_hosts")
		line := strings.Replace(mustRead(t, other.KnownHosts), "]:"+itoa(other.Port)+" ", "]:"+itoa(s.Port)+" ", 1)
		if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := dial(t, s, Options{KnownHosts: kh, AcceptNewHostKey: true})
		if !errors.Is(err, ErrHostKeyChanged) || !strings.Contains(err.Error(), "SHA256:") {
			t.Fatalf("changed host key (even with accept-new): %v", err)
		}
	})
	t.Run("wrong user key", func(t *testing.T) {
		_, err := dial(t, s, Options{KeyFiles: []string{testenv.NewKeyFile(t)}})
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("stranger's key: %v", err)
		}
	})
	t.Run("key with a passphrase", func(t *testing.T) {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret phrase"))
		if err != nil {
			t.Fatal(err)
		}
		locked := filepath.Join(t.TempDir(), "id_locked")
		if err := os.WriteFile(locked, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = dial(t, s, Options{KeyFiles: []string{locked}})
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), locked+" need a passphrase") || !strings.Contains(err.Error(), "ssh-add") {
			t.Fatalf("a passphrase-protected key: %v", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		_, err := Dial(context.Background(), Target{Host: "127.0.0.1", Port: testenv.FreePort(t), User: s.User}, Options{NoAgent: true, ConfigFile: "none", KnownHosts: s.KnownHosts})
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("closed port: %v", err)
		}
	})
}

// TestConfigAlias: a ~/.ssh/config Host alias gives host, port, user and key.
func TestConfigAlias(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	cfg := filepath.Join(t.TempDir(), "config")
	content := "Host pi-test\n  HostName 127.0.0.1\n  Port " + itoa(s.Port) + "\n  User " + s.User + "\n  IdentityFile " + s.ClientKey + "\n"
	if err := os.WriteFile(cfg, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), Target{Host: "pi-test"}, Options{NoAgent: true, ConfigFile: cfg, KnownHosts: s.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	if c.Addr() != "127.0.0.1:"+itoa(s.Port) {
		t.Errorf("addr %s", c.Addr())
	}
}

// TestDockerSocketOverSSH reaches the host's Docker Engine through the
// connection (the deploy's way of talking to the Pi's daemon).
func TestDockerSocketOverSSH(t *testing.T) {
	if err := exec.Command("docker", "version").Run(); err != nil {
		testenv.Missing(t, "a running Docker Engine")
	}
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	c, err := dial(t, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) { return c.DialUnix("/var/run/docker.sock") },
	}}
	resp, err := hc.Get("http://docker/_ping")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "OK" {
		t.Fatalf("docker _ping over ssh: %s %q", resp.Status, body)
	}
}

func mustRead(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestWriteFileNeverExposesSecrets: a file for its owner alone (an env
// file of secrets) never exists, under its temporary name, with a mode
// another user of the host could open it with: whoever opens it then keeps
// reading it after a chmod. A watcher looks for such a moment through many
// writes (SFTP created the file 0644 and chmodded it a round trip later).
func TestWriteFileNeverExposesSecrets(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	c, err := dial(t, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "configs", "environment", "gateway.env")
	var loose atomic.Uint32
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if fi, err := os.Lstat(dst + ".lucid-tmp"); err == nil && fi.Mode().Perm()&0o077 != 0 {
				loose.Store(uint32(fi.Mode().Perm()))
			}
			runtime.Gosched()
		}
	}()
	for i := 0; i < 100 && loose.Load() == 0; i++ {
		if err := c.WriteFile(context.Background(), dst, []byte("JWT_SECRET_KEY=secret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
	if m := loose.Load(); m != 0 {
		t.Errorf("the temporary copy of a secret file existed with mode %#o", m)
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the file: %v %v", fi, err)
	}
}

// TestRunBoundsTheOutput: a command whose output does not end (a hostile
// host, a runaway log) ends at MaxOutput, saying so, rather than fill the
// laptop's memory.
func TestRunBoundsTheOutput(t *testing.T) {
	s := testenv.StartSSHD(t, testenv.SSHDOptions{})
	c, err := dial(t, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), "yes", nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrOutputTooLarge) {
			t.Errorf("an endless output: %v, want ErrOutputTooLarge", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a command with an endless output did not end")
	}
	if out, err := c.Run(context.Background(), "echo still here", nil); err != nil || string(out) != "still here\n" {
		t.Errorf("the connection after: %q %v", out, err)
	}
}
