package deployfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
)

// The gateway's TLS settings in its env file (the edge's contract).
const (
	EnvTLSCertFile   = "LUCID_TLS_CERT_FILE"
	EnvTLSKeyFile    = "LUCID_TLS_KEY_FILE"
	EnvACMEDomains   = "LUCID_ACME_DOMAINS"
	EnvACMEEmail     = "LUCID_ACME_EMAIL"
	EnvACMEDirectory = "LUCID_ACME_DIRECTORY"
	EnvACMECARoot    = "LUCID_ACME_CA_ROOT"
	EnvHTTPSPort     = "LUCID_HTTPS_PORT"
)

// tlsEnvKeys are every key env sets or clears, so that lucid.yaml decides
// them rather than a value left in the operator's env file.
var tlsEnvKeys = []string{EnvTLSCertFile, EnvTLSKeyFile, EnvACMEDomains, EnvACMEEmail, EnvACMEDirectory, EnvACMECARoot, EnvHTTPSPort}

// check refuses TLS settings the gateway would refuse at start: a
// certificate and key that are no pair, a CA root that holds no
// certificate, ACME without a name. Its errors never hold key material.
func (t *TLS) check() error {
	switch {
	case t == nil:
		return nil
	case t.ACME != nil && (t.Cert != nil || t.Key != nil):
		return errors.New("tls: acme, or a certificate and key, not both")
	case t.ACME == nil && (t.Cert == nil || t.Key == nil):
		return errors.New("tls: a certificate and its key are both needed without acme")
	case t.HTTPSPort < 1 || t.HTTPPort < 1 || t.HTTPSPort == t.HTTPPort:
		return fmt.Errorf("tls: ports %d (https) and %d (http) must be two TCP ports", t.HTTPSPort, t.HTTPPort)
	}
	if t.ACME != nil {
		if len(t.ACME.Domains) == 0 {
			return errors.New("tls.acme: no domain")
		}
		if t.ACME.CARoot != nil && !x509.NewCertPool().AppendCertsFromPEM(t.ACME.CARoot) {
			return errors.New("tls.acme.ca_root holds no PEM certificate")
		}
		return nil
	}
	pair, err := tls.X509KeyPair(t.Cert, t.Key)
	if err != nil {
		return fmt.Errorf("tls.cert_file and tls.key_file: %w", err)
	}
	if _, err := x509.ParseCertificate(pair.Certificate[0]); err != nil {
		return fmt.Errorf("tls.cert_file: %w", err)
	}
	return nil
}

// env sets the gateway's TLS settings in vals, its env file's content:
// the files as its container sees them, or the ACME settings; the public
// HTTPS port for the plain listener's redirects. Without TLS, vals keep
// what the operator's env file gave (a certificate mounted by hand).
func (t *TLS) env(vals map[string]string, portOffset int) {
	if t == nil {
		return
	}
	for _, k := range tlsEnvKeys {
		delete(vals, k)
	}
	vals[EnvHTTPSPort] = strconv.Itoa(t.HTTPSPort + portOffset)
	if a := t.ACME; a != nil {
		vals[EnvACMEDomains] = strings.Join(a.Domains, ",")
		vals[EnvACMEDirectory] = a.Directory
		if a.Email != "" {
			vals[EnvACMEEmail] = a.Email
		}
		if a.CARoot != nil {
			vals[EnvACMECARoot] = path.Join(TLSMount, ACMERootName)
		}
		return
	}
	vals[EnvTLSCertFile] = path.Join(TLSMount, TLSCertName)
	vals[EnvTLSKeyFile] = path.Join(TLSMount, TLSKeyName)
}

// files are the TLS files by project path; nil when there are none.
func (t *TLS) files() map[string][]byte {
	if t == nil {
		return nil
	}
	out := map[string][]byte{}
	switch {
	case t.ACME != nil && t.ACME.CARoot != nil:
		out[TLSDir+"/"+ACMERootName] = t.ACME.CARoot
	case t.ACME == nil:
		out[TLSDir+"/"+TLSCertName], out[TLSDir+"/"+TLSKeyName] = t.Cert, t.Key
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// ServesTLS reports whether a gateway with this environment serves HTTPS.
func ServesTLS(env map[string]string) bool {
	return env[EnvTLSCertFile] != "" || env[EnvACMEDomains] != ""
}

// plainHTTPWarning says so when the gateway, with env, serves plain HTTP
// on a published port (compose's "[ip:]host:container") beyond the host's
// loopback.
func plainHTTPWarning(env map[string]string, ports []string) string {
	if ServesTLS(env) {
		return ""
	}
	for _, p := range ports {
		parts := strings.Split(p, ":")
		ip := ""
		if len(parts) == 3 {
			ip = parts[0]
		}
		if len(parts) >= 2 && !loopback(ip) {
			return PlainHTTPMessage(ip, parts[len(parts)-2])
		}
	}
	return ""
}

// PlainHTTPMessage is the warning about a gateway serving plain HTTP on
// host port port of address ip ("" for every address).
func PlainHTTPMessage(ip, port string) string {
	where := "every address of the host"
	if ip != "" && ip != "0.0.0.0" && ip != "::" {
		where = ip
	}
	return fmt.Sprintf("the gateway serves plain HTTP on %s (port %s): bearer tokens cross the network in clear; lucid.yaml's tls section turns HTTPS on", where, port)
}

func loopback(ip string) bool {
	a := net.ParseIP(strings.Trim(ip, "[]"))
	return a != nil && a.IsLoopback()
}
