package projectconfig

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// TLS is the gateway's public TLS (lucid.yaml's tls section): certificates
// obtained and renewed over ACME, or the operator's own certificate and
// key files. Without the section the gateway serves plain HTTP.
type TLS struct {
	// ACME has the gateway obtain and renew its certificates itself.
	ACME *ACME `yaml:"acme"`
	// CertFile and KeyFile are the operator's certificate (PEM, the chain
	// after the leaf) and key, relative to the file's directory.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// HTTPSPort and HTTPPort are the host ports published for the gateway's
	// HTTPS listener and its plain-HTTP one (ACME challenges, redirects).
	HTTPSPort int `yaml:"https_port"`
	HTTPPort  int `yaml:"http_port"`
}

// ACME is where and for which names the gateway obtains certificates.
type ACME struct {
	// Domains are the DNS names the certificates are for.
	Domains []string `yaml:"domains"`
	// Email is the ACME account's contact (optional).
	Email string `yaml:"email"`
	// Directory is the ACME directory URL.
	Directory string `yaml:"directory"`
	// CARoot is a PEM file the directory's own HTTPS is verified against
	// (a private CA), relative to the file's directory; optional.
	CARoot string `yaml:"ca_root"`
}

// TLS defaults.
const (
	DefaultACMEDirectory = "https://acme-v02.api.letsencrypt.org/directory"
	DefaultHTTPSPort     = 443
	DefaultHTTPPort      = 80
)

func (t *TLS) applyDefaults() {
	if t.HTTPSPort == 0 {
		t.HTTPSPort = DefaultHTTPSPort
	}
	if t.HTTPPort == 0 {
		t.HTTPPort = DefaultHTTPPort
	}
	if t.ACME != nil && t.ACME.Directory == "" {
		t.ACME.Directory = DefaultACMEDirectory
	}
}

// checkTLS validates the tls section: every problem, each with the line of
// the key at fault. Files are looked for relative to dir, the file's
// directory.
func (c *Config) checkTLS(name, dir string, root *yaml.Node) error {
	t := c.TLS
	if t == nil {
		return nil
	}
	var errs []error
	bad := func(keys []string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: tls%s: %s", name, lineOf(root, append([]string{"tls"}, keys...)...),
			strings.Join(append([]string{""}, keys...), "."), fmt.Sprintf(format, args...)))
	}
	exists := func(keys []string, p string) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		st, err := os.Stat(p)
		switch {
		case err != nil:
			bad(keys, "%s: %v", p, errors.Unwrap(err))
		case st.IsDir():
			bad(keys, "%s is a directory, not a PEM file", p)
		}
	}
	files := t.CertFile != "" || t.KeyFile != ""
	switch {
	case t.ACME != nil && files:
		bad([]string{"acme"}, "acme and cert_file/key_file exclude each other: the gateway obtains its certificates, or serves yours")
	case t.ACME == nil && !files:
		bad(nil, "needs acme (certificates obtained and renewed automatically), or cert_file and key_file (yours)")
	case files && t.CertFile == "":
		bad([]string{"key_file"}, "key_file needs cert_file beside it")
	case files && t.KeyFile == "":
		bad([]string{"cert_file"}, "cert_file needs key_file beside it")
	}
	if t.CertFile != "" {
		exists([]string{"cert_file"}, t.CertFile)
	}
	if t.KeyFile != "" {
		exists([]string{"key_file"}, t.KeyFile)
	}
	if a := t.ACME; a != nil {
		if len(a.Domains) == 0 {
			bad([]string{"acme", "domains"}, "lists no DNS name to obtain a certificate for")
		}
		seen := map[string]bool{}
		for _, d := range a.Domains {
			if err := checkDomain(d); err != nil {
				bad([]string{"acme", "domains"}, "%q %v", d, err)
			}
			if k := strings.ToLower(d); seen[k] {
				bad([]string{"acme", "domains"}, "%q is listed twice", d)
			} else {
				seen[k] = true
			}
		}
		if a.Email != "" {
			if addr, err := mail.ParseAddress(a.Email); err != nil || addr.Address != a.Email {
				bad([]string{"acme", "email"}, "%q is not an email address", a.Email)
			}
		}
		if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
			bad([]string{"acme", "directory"}, "%q is not an https URL (an ACME directory, %s by default)", a.Directory, DefaultACMEDirectory)
		}
		if a.CARoot != "" {
			exists([]string{"acme", "ca_root"}, a.CARoot)
		}
	}
	for _, p := range []struct {
		key  string
		port int
	}{{"https_port", t.HTTPSPort}, {"http_port", t.HTTPPort}} {
		if p.port < 1 || p.port > 65535 {
			bad([]string{p.key}, "%d is not a TCP port (1 to 65535)", p.port)
		}
	}
	if t.HTTPSPort == t.HTTPPort {
		bad([]string{"http_port"}, "%d is https_port too: the two listeners need ports of their own", t.HTTPPort)
	}
	return errors.Join(errs...)
}

// checkDomain reports why d is not a DNS name a public certificate can be
// obtained for over HTTP-01 or TLS-ALPN-01.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("is empty")
	case net.ParseIP(d) != nil:
		return errors.New("is an IP address; ACME certificates here are for DNS names")
	case strings.HasPrefix(d, "*."):
		return errors.New("is a wildcard, which needs a DNS-01 challenge; HTTP-01 and TLS-ALPN-01 obtain one name at a time")
	case len(d) > 253:
		return errors.New("is longer than 253 characters")
	}
	for _, label := range strings.Split(strings.TrimSuffix(d, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("is not a DNS name (labels of 1 to 63 letters, digits and hyphens, not starting or ending with one)")
		}
		for _, r := range label {
			if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '-' {
				return fmt.Errorf("is not a DNS name (%q is not a letter, digit or hyphen)", r)
			}
		}
	}
	return nil
}

// lineOf is the line of the deepest key of path that the document has (0
// when not even the first is there).
func lineOf(document *yaml.Node, path ...string) int {
	n := document
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, key := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			break
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				line, next = n.Content[i].Line, n.Content[i+1]
				break
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}
