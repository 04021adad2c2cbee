package testenv

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is a throwaway OpenSSH server on 127.0.0.1 for one test, with its
// own host key and one authorized client key.
type SSHD struct {
	Host string
	Port int
	// User is the local user, whom the client key logs in as.
	User string
	// HostKey is the server's public key.
	HostKey ssh.PublicKey
	// ClientKey is the path of the authorized private key (OpenSSH format).
	ClientKey string
	// KnownHosts is a known_hosts file that trusts the server.
	KnownHosts string
	// Dir holds the server's files.
	Dir string
	cmd *exec.Cmd
	out *SyncBuffer
}

// SSHDOptions tune StartSSHD.
type SSHDOptions struct {
	// NoSFTP leaves the sftp subsystem out of the server's configuration.
	NoSFTP bool
}

// StartSSHD runs sshd for the test; it skips (fails in CI) without sshd.
func StartSSHD(t testing.TB, o SSHDOptions) *SSHD {
	t.Helper()
	bin := Tool(t, "sshd", "")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil && u.Uid == "0" {
		t.Fatalf("sshd privilege separation directory: %v", err)
	}
	dir := t.TempDir()
	hostPub, hostKeyFile := writeKey(t, dir, "host_ed25519")
	clientPub, clientKeyFile := writeKey(t, dir, "client_ed25519")
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	conf := []string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + hostKeyFile,
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"StrictModes no",
		"UsePAM no",
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"AllowStreamLocalForwarding yes",
		"AllowTcpForwarding yes",
		"LogLevel VERBOSE",
		// A remote command's bash reads the user's ~/.bashrc only at shell
		// level 1; this machine's (pyenv init) costs about a second a
		// session, which the deploy and lock tests open by the hundred.
		"SetEnv SHLVL=1",
	}
	if !o.NoSFTP {
		for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server"} {
			if isFile(p) {
				conf = append(conf, "Subsystem sftp "+p)
				break
			}
		}
	}
	confFile := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(confFile, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &SSHD{Host: "127.0.0.1", Port: port, User: u.Username, HostKey: hostPub, ClientKey: clientKeyFile, Dir: dir, out: &SyncBuffer{}}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(s.Host, strconv.Itoa(port)))}, hostPub)
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, "-D", "-e", "-f", confFile)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		if t.Failed() {
			t.Logf("sshd output:\n%s", s.out.String())
		}
	})
	Eventually(t, 10*time.Second, "sshd listening", func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(s.Host, strconv.Itoa(port)), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}

// Output is what sshd has logged so far.
func (s *SSHD) Output() string { return s.out.String() }

// KillSessions kills the server's per-connection children, cutting every
// open connection, while the listener stays up.
func (s *SSHD) KillSessions(t testing.TB) {
	t.Helper()
	_ = exec.Command("pkill", "-KILL", "-P", fmt.Sprint(s.cmd.Process.Pid)).Run()
}

// WriteKey makes an ed25519 key pair, writes the private key to dir/name
// in OpenSSH format (0600) and returns the public key and the file.
func WriteKey(t testing.TB, dir, name string) (ssh.PublicKey, string) {
	t.Helper()
	return writeKey(t, dir, name)
}

// writeKey makes an ed25519 key pair, writes the private key in OpenSSH
// format (0600) and returns the public key and the file.
func writeKey(t testing.TB, dir, name string) (ssh.PublicKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub, file
}

// NewKeyFile writes a fresh private key nobody authorized, for tests of
// refusals.
func NewKeyFile(t testing.TB) string {
	_, f := writeKey(t, t.TempDir(), "stranger_ed25519")
	return f
}
