// Package sshx is the SSH transport of deploys: one verified connection to a
// host, reused for commands, file uploads and streams to the host's Docker
// socket.
//
// Host keys are checked against known_hosts with the host key algorithms
// set to those known for the host (so a server offering another key type
// does not look like a changed key). An unknown host is refused unless the
// caller accepts new keys, which records the key; a changed key is always
// refused, with its fingerprint. Keys come from files and from ssh-agent;
// ~/.ssh/config host aliases are honoured. Every failure is an error that
// says which: no route, refused, authentication, unknown or changed host
// key.
package sshx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kevinburke/ssh_config"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Target is a host to connect to, as lucid.yaml names it.
type Target struct {
	// Host is a name, an address, or an alias of ~/.ssh/config.
	Host string
	Port int    // 0: from ~/.ssh/config, else 22
	User string // "": from ~/.ssh/config, else the local user
}

// Options tune a connection.
type Options struct {
	// KeyFiles are private keys to offer (default: ~/.ssh/config's
	// IdentityFile, else ~/.ssh/id_ed25519, id_ecdsa, id_rsa, those that
	// exist). Passphrase-protected keys are skipped: load them in ssh-agent.
	KeyFiles []string
	// NoAgent leaves ssh-agent out.
	NoAgent bool
	// KnownHosts is the known_hosts file (default ~/.ssh/known_hosts).
	KnownHosts string
	// AcceptNewHostKey records the key of a host not yet in KnownHosts
	// instead of refusing it. A changed key is refused regardless.
	AcceptNewHostKey bool
	// ConfigFile is the ssh config for aliases (default ~/.ssh/config;
	// "none" reads none).
	ConfigFile string
	// Timeout bounds the dial and the handshake (default 10 s).
	Timeout time.Duration
	// KeepAlive is the interval of keep-alive requests (default 15 s); a
	// host that misses three is dropped.
	KeepAlive time.Duration
	// Getenv reads SSH_AUTH_SOCK and HOME (default os.Getenv).
	Getenv func(string) string
}

// Failure kinds.
var (
	ErrNoRoute        = errors.New("host unreachable")
	ErrRefused        = errors.New("connection refused")
	ErrAuth           = errors.New("authentication failed")
	ErrUnknownHostKey = errors.New("host key unknown")
	ErrHostKeyChanged = errors.New("host key changed")
)

// HostKeyError is a refused host key.
type HostKeyError struct {
	Host        string
	Fingerprint string // SHA256:... of the key the host offered
	KnownHosts  string
	Changed     bool
}

func (e *HostKeyError) Error() string {
	if e.Changed {
		return fmt.Sprintf("%s: the host key changed (it now offers %s); refusing. If the host was reinstalled, remove its old line from %s", e.Host, e.Fingerprint, e.KnownHosts)
	}
	return fmt.Sprintf("%s: host key %s is not in %s", e.Host, e.Fingerprint, e.KnownHosts)
}

// Is makes errors.Is match ErrHostKeyChanged or ErrUnknownHostKey,
// whichever this error is.
func (e *HostKeyError) Is(target error) bool {
	return (e.Changed && target == ErrHostKeyChanged) || (!e.Changed && target == ErrUnknownHostKey)
}

// Client is one SSH connection. It is safe for concurrent use.
type Client struct {
	ssh  *ssh.Client
	addr string
	stop chan struct{}
	once sync.Once

	sftpOnce sync.Once
	sftp     *sftp.Client
	sftpErr  error

	// keyFP is the SHA256 fingerprint of the key the server accepted.
	keyFP string
}

// KeyFingerprint is the fingerprint (SHA256:...) of the public key that
// authenticated this connection, a key file's or an ssh-agent's alike, so
// that an audit trail can say which key acted. It is "" only when no key
// signed (a server that let the user in without one).
func (c *Client) KeyFingerprint() string { return c.keyFP }

// Addr is host:port of the connection.
func (c *Client) Addr() string { return c.addr }

// Dial connects to t and authenticates.
func Dial(ctx context.Context, t Target, o Options) (*Client, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 15 * time.Second
	}
	home := o.Getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	host, port, user, identities := resolve(t, o, home)
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if o.KnownHosts == "" {
		o.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	hostKeys, algos, err := hostKeyCheck(o.KnownHosts, addr, o.AcceptNewHostKey)
	if err != nil {
		return nil, err
	}
	if len(o.KeyFiles) == 0 {
		o.KeyFiles = identities
	}
	signed := &signedBy{}
	creds := authMethods(o, home, signed)
	defer creds.close()
	cfg := &ssh.ClientConfig{
		User: user, Auth: creds.methods, HostKeyCallback: hostKeys, HostKeyAlgorithms: algos,
		Timeout: o.Timeout,
	}

	d := net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, dialError(addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(o.Timeout))
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		var hk *HostKeyError
		switch {
		case errors.As(err, &hk):
			return nil, hk
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, fmt.Errorf("%s as %s: %w (offered: %s)", addr, user, ErrAuth, creds.describe())
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	c := &Client{ssh: ssh.NewClient(sc, chans, reqs), addr: addr, stop: make(chan struct{}), keyFP: signed.get()}
	go c.keepAlive(o.KeepAlive)
	return c, nil
}

// Close ends the connection.
func (c *Client) Close() error {
	c.once.Do(func() { close(c.stop) })
	// Settle the SFTP client first: opened by now, or never to be.
	c.sftpOnce.Do(func() { c.sftpErr = errNoSFTP })
	if c.sftp != nil {
		_ = c.sftp.Close() // ends with the connection below; its error is that one
	}
	return c.ssh.Close()
}

// keepAlive sends a request every interval; three unanswered in a row
// close the connection, so a dead host fails the deploy's next step fast.
func (c *Client) keepAlive(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	missed := 0
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		done := make(chan error, 1)
		go func() {
			_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				return // the connection is gone
			}
			missed = 0
		case <-time.After(interval):
			if missed++; missed >= 3 {
				_ = c.ssh.Close() // the point is to fail the next step fast
				return
			}
		}
	}
}

// resolve applies ~/.ssh/config to t.
func resolve(t Target, o Options, home string) (host string, port int, user string, identities []string) {
	host, port, user = t.Host, t.Port, t.User
	var cfg *ssh_config.Config
	if o.ConfigFile != "none" {
		path := o.ConfigFile
		if path == "" {
			path = filepath.Join(home, ".ssh", "config")
		}
		if f, err := os.Open(path); err == nil {
			cfg, _ = ssh_config.Decode(f)
			_ = f.Close() // only read: no data to lose
		}
	}
	get := func(key string) string {
		if cfg == nil {
			return ""
		}
		v, _ := cfg.Get(t.Host, key)
		return v
	}
	if h := get("HostName"); h != "" {
		host = h
	}
	if port == 0 {
		if p, err := strconv.Atoi(get("Port")); err == nil && p > 0 {
			port = p
		} else {
			port = 22
		}
	}
	if user == "" {
		if user = get("User"); user == "" {
			user = LocalUser(o.Getenv)
		}
	}
	if id := get("IdentityFile"); id != "" {
		identities = append(identities, expandHome(id, home))
	}
	for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		identities = append(identities, filepath.Join(home, ".ssh", name))
	}
	return host, port, user, identities
}

// LocalUser is the user running lucidctl ($USER, else the account name
// without a Windows domain), or "" when neither is known.
func LocalUser(getenv func(string) string) string {
	if u := getenv("USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		name := u.Username
		if i := strings.LastIndex(name, `\`); i >= 0 {
			name = name[i+1:]
		}
		return name
	}
	return ""
}

func expandHome(p, home string) string {
	if strings.HasPrefix(p, "~/") {
		return filepath.Join(home, p[2:])
	}
	return p
}

// hostKeyCheck builds the host key callback and the algorithms to ask for:
// those of the keys known for addr, so that the server presents one we can
// compare.
func hostKeyCheck(file, addr string, acceptNew bool) (ssh.HostKeyCallback, []string, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, nil, err
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			return nil, nil, err
		}
	}
	check, err := knownhosts.New(file)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts %s: %w", file, err)
	}
	var algos []string
	// Asking about a throwaway key lists the known ones in the KeyError.
	probe := probeKey()
	var ke *knownhosts.KeyError
	if err := check(addr, &net.TCPAddr{IP: net.IPv4zero}, probe); errors.As(err, &ke) {
		for _, k := range ke.Want {
			algos = append(algos, algorithmsFor(k.Key.Type())...)
		}
	}
	var mu sync.Mutex
	cb := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := check(hostname, remote, key)
		var ke *knownhosts.KeyError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ke) && len(ke.Want) > 0:
			return &HostKeyError{Host: hostname, Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: file, Changed: true}
		case errors.As(err, &ke) && acceptNew:
			mu.Lock()
			defer mu.Unlock()
			f, ferr := os.OpenFile(file, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
			if ferr != nil {
				return ferr
			}
			_, ferr = fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key))
			return errors.Join(ferr, f.Close())
		case errors.As(err, &ke):
			return &HostKeyError{Host: hostname, Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: file}
		}
		return err
	}
	return cb, algos, nil
}

// algorithmsFor lists the host key algorithms that verify a key type.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// credentials are what Dial offers the server, and what it could not use.
type credentials struct {
	methods []ssh.AuthMethod
	agent   bool     // an ssh-agent answered
	keys    []string // key files loaded
	locked  []string // key files that need a passphrase
	close   func()
}

// authMethods offers the agent's keys, then the key files.
func authMethods(o Options, home string, signed *signedBy) credentials {
	cr := credentials{close: func() {}}
	if !o.NoAgent {
		if conn, err := dialAgent(o.Getenv("SSH_AUTH_SOCK")); err == nil {
			ag := agent.NewClient(conn)
			cr.methods = append(cr.methods, ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
				ss, err := ag.Signers()
				return signed.wrap(ss), err
			}))
			cr.agent, cr.close = true, func() { conn.Close() }
		}
	}
	var signers []ssh.Signer
	for _, f := range o.KeyFiles {
		data, err := os.ReadFile(expandHome(f, home))
		if err != nil {
			continue
		}
		s, err := ssh.ParsePrivateKey(data)
		var locked *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &locked):
			cr.locked = append(cr.locked, f) // the agent's business
		case err == nil:
			signers = append(signers, s)
			cr.keys = append(cr.keys, f)
		}
	}
	if len(signers) > 0 {
		cr.methods = append(cr.methods, ssh.PublicKeys(signed.wrap(signers)...))
	}
	return cr
}

// describe says what was offered, for an authentication failure.
func (cr credentials) describe() string {
	var parts []string
	if cr.agent {
		parts = append(parts, "the ssh-agent's keys")
	}
	parts = append(parts, cr.keys...)
	offered := strings.Join(parts, ", ")
	if offered == "" {
		offered = "no key: no key file could be read and no ssh-agent answered"
	}
	if len(cr.locked) > 0 {
		offered += fmt.Sprintf("; %s need a passphrase: add them to the agent with ssh-add", strings.Join(cr.locked, ", "))
	}
	return offered
}

// dialError names a dial failure.
func dialError(addr string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return fmt.Errorf("%s: %w (is sshd running, and is the port right?)", addr, ErrRefused)
	case strings.Contains(msg, "no route"), strings.Contains(msg, "unreachable"), strings.Contains(msg, "i/o timeout"), strings.Contains(msg, "no such host"):
		return fmt.Errorf("%s: %w: %w", addr, ErrNoRoute, err)
	}
	return fmt.Errorf("dial %s: %w", addr, err)
}
