package sshx

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// ExitError is a remote command that ran and failed.
type ExitError struct {
	Command string
	Code    int
	Stderr  string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return fmt.Sprintf("%s: exit status %d: %s", e.Command, e.Code, msg)
}

// Run runs cmd (a shell command line) with stdin, and returns its stdout.
// ctx ending closes the session.
func (c *Client) Run(ctx context.Context, cmd string, stdin io.Reader) ([]byte, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("ssh session to %s: %w", c.addr, err)
	}
	// A session's Close reports io.EOF once the command has ended, and
	// the command's own result is what Run returns.
	defer func() { _ = s.Close() }()
	over := &overflow{ch: make(chan struct{})}
	stdout, stderr := &capped{limit: MaxOutput, over: over}, &capped{limit: MaxOutput, over: over}
	s.Stdout, s.Stderr, s.Stdin = stdout, stderr, stdin
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-over.ch:
		_ = s.Signal(ssh.SIGTERM)
		_ = s.Close()
		return nil, fmt.Errorf("%s on %s: %w", shorten(cmd), c.addr, ErrOutputTooLarge)
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM)
		_ = s.Close()
		return nil, fmt.Errorf("%s on %s: %w", shorten(cmd), c.addr, ctx.Err())
	}
	var ee *ssh.ExitError
	switch {
	case errors.As(err, &ee):
		return stdout.buf.Bytes(), &ExitError{Command: shorten(cmd), Code: ee.ExitStatus(), Stderr: stderr.buf.String()}
	case err != nil:
		return nil, fmt.Errorf("%s on %s: %w", shorten(cmd), c.addr, err)
	}
	return stdout.buf.Bytes(), nil
}

// MaxOutput bounds what Run keeps of a command's output, each of stdout
// and stderr: far above what any of lucidctl's commands reads (a
// release's files, the audit log), and a host that sends more (a hostile
// one, a runaway log) cannot fill the laptop's memory.
const MaxOutput = 64 << 20

// ErrOutputTooLarge is a command whose output passed MaxOutput.
var ErrOutputTooLarge = fmt.Errorf("its output passed %d MiB", MaxOutput>>20)

// capped is a buffer that refuses to grow past its limit, and then says
// so on its overflow.
type capped struct {
	buf   bytes.Buffer
	limit int
	over  *overflow
}

// overflow is closed once, by whichever of a command's buffers is first
// to pass its limit.
type overflow struct {
	ch   chan struct{}
	once sync.Once
}

func (b *capped) Write(p []byte) (int, error) {
	if b.buf.Len()+len(p) > b.limit {
		b.over.once.Do(func() { close(b.over.ch) })
		return 0, ErrOutputTooLarge
	}
	return b.buf.Write(p)
}

// shorten keeps error messages readable; commands carry no secrets (the
// env file travels on standard input or by SFTP).
func shorten(cmd string) string {
	if len(cmd) > 160 {
		return cmd[:160] + "..."
	}
	return cmd
}

// Quote makes s one word for a POSIX shell.
func Quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WriteFile writes data to path on the host with mode: to a temporary name
// beside it, checked whole, flushed to the host's disk, then renamed, so a
// reader never sees half a file, nor a power cut or a cut connection an
// empty or shortened one. It uses SFTP with
// concurrent writes, or, when the host has no SFTP subsystem, a plain
// command. A file for its owner alone (a secret: no group or other bits)
// always takes the command, under umask 077: SFTP creates a file with the
// server's umask (0644) and can only chmod it a round trip later, and
// another user who opened it meanwhile would keep reading it.
func (c *Client) WriteFile(ctx context.Context, p string, data []byte, mode os.FileMode) error {
	if mode.Perm()&0o077 != 0 {
		if err := c.writeSFTP(p, data, mode); err == nil {
			return nil
		} else if !errors.Is(err, errNoSFTP) {
			return err
		}
	}
	return c.writeCommand(ctx, p, bytes.NewReader(data), len(data), mode)
}

// writeCommand writes the size bytes of body to p by a command that reads
// them on its standard input. A cut connection or a killed lucidctl only
// ends that input early (sshd does not stop a command without a
// terminal), which cat takes for the end of the file: the command checks
// the size it received before the rename, or a cut transfer would replace
// the file with its first part.
func (c *Client) writeCommand(ctx context.Context, p string, body io.Reader, size int, mode os.FileMode) error {
	tmp := Quote(p + ".lucid-tmp")
	// sync with a file flushes that file (coreutils); a sync without one
	// (busybox) flushes everything. $n is unquoted: some wc pad it.
	cmd := fmt.Sprintf("mkdir -p %s && umask 077 && cat > %s && n=$(wc -c < %s) && "+
		"{ [ $n -eq %d ] || { rm -f %s; echo \"received $n of %d bytes: the transfer was cut\" >&2; exit 1; }; } && "+
		"chmod %o %s && { sync %s 2>/dev/null || sync; } && mv -f %s %s",
		Quote(path.Dir(p)), tmp, tmp, size, tmp, size, mode.Perm(), tmp, tmp, tmp, Quote(p))
	if _, err := c.Run(ctx, cmd, body); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

var errNoSFTP = errors.New("no sftp subsystem")

// sftpClient is opened once per connection; a host without the subsystem
// is remembered as such.
func (c *Client) sftpClient() (*sftp.Client, error) {
	c.sftpOnce.Do(func() {
		c.sftp, c.sftpErr = sftp.NewClient(c.ssh, sftp.UseConcurrentWrites(true))
		if c.sftpErr != nil {
			c.sftpErr = fmt.Errorf("%w: %w", errNoSFTP, c.sftpErr)
		}
	})
	return c.sftp, c.sftpErr
}

func (c *Client) writeSFTP(p string, data []byte, mode os.FileMode) error {
	sc, err := c.sftpClient()
	if err != nil {
		return err
	}
	if err := sc.MkdirAll(path.Dir(p)); err != nil {
		return fmt.Errorf("mkdir %s: %w", path.Dir(p), err)
	}
	tmp := p + ".lucid-tmp"
	f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	// On failure the temporary file is abandoned (the next upload
	// truncates it): the failure is what to report, not the Close after it.
	if err := f.Chmod(mode.Perm()); err != nil {
		_ = f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// On the host's disk before the rename makes it the file (OpenSSH's
	// fsync extension; a server without it renames unflushed).
	if v, ok := sc.HasExtension("fsync@openssh.com"); ok && v == "1" {
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return fmt.Errorf("fsync %s: %w", tmp, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := sc.PosixRename(tmp, p); err != nil {
		// Servers without the posix-rename extension: replace by hand.
		_ = sc.Remove(p)
		if err2 := sc.Rename(tmp, p); err2 != nil {
			return fmt.Errorf("rename %s: %w", p, err)
		}
	}
	return nil
}

// DialUnix opens a stream to a Unix socket on the host (its Docker
// socket), over this connection.
func (c *Client) DialUnix(socket string) (net.Conn, error) {
	conn, err := c.ssh.Dial("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", socket, c.addr, err)
	}
	return conn, nil
}

// DialTCP opens a stream to addr as seen from the host.
func (c *Client) DialTCP(addr string) (net.Conn, error) {
	conn, err := c.ssh.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s via %s: %w", addr, c.addr, err)
	}
	return conn, nil
}

var (
	probeOnce sync.Once
	probe     ssh.PublicKey
)

// probeKey is a throwaway key for asking known_hosts what it knows.
func probeKey() ssh.PublicKey {
	probeOnce.Do(func() {
		pub, _, err := ed25519.GenerateKey(nil)
		if err != nil {
			panic(err)
		}
		probe, _ = ssh.NewPublicKey(pub)
	})
	return probe
}
