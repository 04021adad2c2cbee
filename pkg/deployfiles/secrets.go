package deployfiles

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
)

// PreviousKeys are the variables holding rotated secrets' previous values
// (keyring.PreviousVar), sorted. They are secrets too: redacted, and given
// only to the service that verifies or opens with them (the gateway,
// the data chain, the mesh controller: catalog).
var PreviousKeys = func() []string {
	out := slices.Collect(maps.Values(keyring.PreviousVar))
	slices.Sort(out)
	return out
}()

// DataBound are the secrets (keys of Secrets) that a host holding data
// keeps: once a release ran with one, a release with another breaks what
// the host or its users already hold, so a deploy refuses to replace one
// unless told to. A fresh clone's render generates new ones; the host's
// deployed values are the truth.
var DataBound = []string{
	// The data chain encrypts chunks at rest with it: under another key
	// the packs already on the SD card cannot be read, and the chain
	// refuses to start.
	"ENCRYPTION_KEY",
	// The gateway signs users' tokens with it: under another every token
	// issued stops working.
	"JWT_SECRET_KEY",
	// The mesh controller's, from which each service's enrolment token
	// derives: the controller's data keeps the CA and the enrolments made
	// under it, and the operator derives the gateway's token from it to
	// check the trust bundle.
	"LUCID_MESH_TOKEN",
	// Consul's management token, from which the gateway's own token
	// derives: a Consul that keeps its ACLs (one run elsewhere) and every
	// script holding it still expect the old one.
	ConsulTokenKey,
	// The operator's token: the services hold its hash, the operator and
	// their scripts the token; a new one locks them out of maintenance.
	"LUCID_OPERATOR_TOKEN",
	// A cluster's gossip key: Consul keeps its keyring in its data and
	// ignores a new key once it has one, so a Pi given another could no
	// longer join the others.
	ConsulGossipKey,
	// LUCID_SERVICE_KEY is not here: only services read it, and a release
	// gives all of them the new one at once.
}

// deployedSecrets are the secrets a release's env files may hold as the
// operator's file does: Secrets, and a cluster's.
var deployedSecrets = append(slices.Clone(Secrets), ClusterSecrets...)

// operatorTokenHashKey is the key the services get the operator token's
// hash under (ServiceEnv).
const operatorTokenHashKey = "LUCID_OPERATOR_TOKEN_SHA256"

// DeployedSecrets is what a set of service env files, as a release holds
// them, says of the operator's secrets (Secrets): the value of each one
// some file holds as it is, and the hashes of the operator's credentials,
// which are all a host has of the operator token. Derived values
// (enrolment tokens, the gateway's Consul token) are not secrets of their
// own: they follow the one they derive from.
type DeployedSecrets struct {
	// Values are the secrets by key of the operator's env file (Secrets
	// and ClusterSecrets).
	Values map[string]string
	// host is the host the files are for (its target name in lucid.yaml),
	// to which their operator credentials are bound.
	host string
	// operatorHashes are the LUCID_OPERATOR_TOKEN_SHA256 values the files
	// hold, by service: the hash of the service's own operator credential
	// on the host (auth.OperatorCredential), or, in a release rendered
	// before those, of its credential for any host, or before that of the
	// token itself in every file (OperatorHashes).
	operatorHashes map[string]string
	// Previous are the previous-values variables (PreviousKeys) some file
	// holds, by variable, as they are.
	Previous map[string]string
}

// Keeps reports whether d holds value among the previous values of secret
// (a key of keyring.PreviousVar): a rotation that keeps the old value
// accepted. A variable that does not parse keeps nothing.
func (d DeployedSecrets) Keeps(secret, value string) bool {
	entries, err := keyring.Parse(d.Previous[keyring.PreviousVar[secret]])
	return err == nil && value != "" && keyring.Contains(entries, []byte(value))
}

// ReadDeployedSecrets reads the env files of a release (by project path,
// ServiceEnvPath; a release of before per-service env files holds EnvPath
// itself) for host, the target they are deployed on or are for (the
// rendered files, before a deploy binds them, are auth.LocalHost's). A
// file that does not parse is an error naming its path and line, never a
// value.
func ReadDeployedSecrets(host string, files map[string][]byte) (DeployedSecrets, error) {
	out := DeployedSecrets{Values: map[string]string{}, Previous: map[string]string{}, host: host, operatorHashes: map[string]string{}}
	meshFile := ServiceEnvPath(catalog.MeshService)
	// raw says whether file p holds key k as the operator's file does.
	raw := func(p, k string) bool {
		switch k {
		case "LUCID_MESH_TOKEN", keyring.MeshPrevious:
			return p == meshFile || p == EnvPath
		case ConsulTokenKey:
			return p == meshFile || p == ServiceEnvPath(consulEnvName) || p == EnvPath
		case ConsulGossipKey:
			return p == ServiceEnvPath(consulEnvName) || p == EnvPath
		case "LUCID_OPERATOR_TOKEN":
			return p == EnvPath
		}
		return true
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		vals, err := envfile.Parse(files[p])
		if err != nil {
			return DeployedSecrets{}, &envFileError{path: p, err: err}
		}
		for _, k := range deployedSecrets {
			if v := vals[k]; v != "" && raw(p, k) {
				if _, ok := out.Values[k]; !ok {
					out.Values[k] = v
				}
			}
		}
		for _, k := range PreviousKeys {
			if v := vals[k]; v != "" && raw(p, k) {
				if _, ok := out.Previous[k]; !ok {
					out.Previous[k] = v
				}
			}
		}
		if h := vals[operatorTokenHashKey]; h != "" {
			svc := strings.TrimSuffix(path.Base(p), ".env")
			if p == EnvPath {
				svc = "" // a release of before per-service env files
			}
			out.operatorHashes[svc] = h
		}
	}
	return out, nil
}

// OperatorHashes is what a release's services hold of the operator's
// credentials, as a token and the host's name tell: DeployedSecrets'
// OperatorHashesOf.
type OperatorHashes int

// What a release's services may hold of the operator's credentials, from
// the newest form to none at all.
const (
	// OperatorHashesNone: no service holds a hash (nobody may act as the
	// operator), or there was no token to tell by.
	OperatorHashesNone OperatorHashes = iota
	// OperatorHashesBound: each service holds the hash of its credential
	// from the token for this host, the one lucidctl sends it.
	OperatorHashesBound
	// OperatorHashesPerService: the release was rendered before per-host
	// credentials: each service holds the hash of its credential from the
	// token for any host (auth.LegacyOperatorCredential), which lucidctl
	// no longer sends, since another host's service could replay it.
	OperatorHashesPerService
	// OperatorHashesOfToken: the release was rendered before per-service
	// credentials: the services hold the hash of the token itself (or
	// the token, before per-service env files).
	OperatorHashesOfToken
	// OperatorHashesOther: another token's credentials, or this token's
	// bound to another host (env files restored from another host's
	// backup).
	OperatorHashesOther
)

// Stale says the hashes are the token's, in the form of a release
// rendered before per-host credentials: the same token, whose credentials
// a deploy of the host binds to it.
func (h OperatorHashes) Stale() bool {
	return h == OperatorHashesPerService || h == OperatorHashesOfToken
}

// Refusal says why the services of host, which hold h, refuse the
// credentials lucidctl derives from its token, and what to do; both ""
// when h gives them no reason to. Neither names a value.
func (h OperatorHashes) Refusal(host string) (why, hint string) {
	deploy := fmt.Sprintf("deploy %s (lucidctl deploy %s): a release rendered now binds each service's operator credential to the host; lucidctl never falls back to the older credentials", host, host)
	switch h {
	case OperatorHashesPerService:
		return fmt.Sprintf("%s runs a release rendered before per-host operator credentials: its services accept each service's credential for any host, which lucidctl no longer sends, since a compromised service could replay it to the same service on another host", host), deploy
	case OperatorHashesOfToken:
		return fmt.Sprintf("%s runs a release rendered before per-service operator credentials: its services hold the operator token's own hash, which lucidctl no longer sends", host), deploy
	case OperatorHashesOther:
		return fmt.Sprintf("%s's services hold operator credentials of another LUCID_OPERATOR_TOKEN, or ones bound to another host", host),
			"use the env file the deployment was rendered from (--env-file); env files restored from another host's backup are bound to that host: deploy this one with --rotate LUCID_OPERATOR_TOKEN"
	case OperatorHashesNone:
		return fmt.Sprintf("%s's services hold no operator credential", host), "render with LUCID_OPERATOR_TOKEN in the operator's env file, then deploy " + host
	}
	return "", ""
}

// OperatorHashesOf says what d's services hold of the operator
// credentials lucidctl derives from token for d's host.
func (d DeployedSecrets) OperatorHashesOf(token string) OperatorHashes {
	if token == "" {
		return OperatorHashesNone
	}
	if v := d.Values["LUCID_OPERATOR_TOKEN"]; v != "" {
		// The token itself: a release of before per-service env files.
		if v == token {
			return OperatorHashesOfToken
		}
		return OperatorHashesOther
	}
	if len(d.operatorHashes) == 0 {
		return OperatorHashesNone
	}
	out := OperatorHashesBound
	for svc, h := range d.operatorHashes {
		form := operatorFormOf(h, token, svc, d.host)
		if form == OperatorHashesOther || (svc == "" && form != OperatorHashesOfToken) {
			return OperatorHashesOther
		}
		out = max(out, form)
	}
	return out
}

// operatorFormOf is what h, the hash service holds, is of token on host:
// the hash of service's credential for host (OperatorHashesBound), of its
// credential in a release rendered before per-host ones
// (OperatorHashesPerService), of the token itself (OperatorHashesOfToken),
// or of none of these (OperatorHashesOther).
func operatorFormOf(h, token, service, host string) OperatorHashes {
	switch h {
	case auth.OperatorTokenHash(token):
		return OperatorHashesOfToken
	case auth.OperatorTokenHash(auth.OperatorCredential(token, service, host)):
		return OperatorHashesBound
	case auth.OperatorTokenHash(auth.LegacyOperatorCredential(token, service)):
		return OperatorHashesPerService
	}
	return OperatorHashesOther
}

// holdsToken says d's services hold credentials of token, in any form.
func (d DeployedSecrets) holdsToken(token string) bool {
	h := d.OperatorHashesOf(token)
	return h == OperatorHashesBound || h.Stale()
}

// operatorTokenIs reports whether d knows the operator token (known) and
// whether it is tok (same).
func (d DeployedSecrets) operatorTokenIs(tok string) (known, same bool) {
	if d.Values["LUCID_OPERATOR_TOKEN"] == "" && len(d.operatorHashes) == 0 {
		return false, false
	}
	return true, d.holdsToken(tok)
}

// sameOperatorToken reports whether d and other hold the same operator
// token, when both say enough to tell (known).
func (d DeployedSecrets) sameOperatorToken(other DeployedSecrets) (known, same bool) {
	if v := d.Values["LUCID_OPERATOR_TOKEN"]; v != "" {
		return other.operatorTokenIs(v)
	}
	if v := other.Values["LUCID_OPERATOR_TOKEN"]; v != "" {
		return d.operatorTokenIs(v)
	}
	// Hashes alone compare only if both are bound to one host and of one
	// kind: per service, or of the token itself (the same in every file,
	// in releases rendered before per-service credentials).
	if d.host != other.host || d.tokenHashed() != other.tokenHashed() {
		return false, false
	}
	for svc, h := range d.operatorHashes {
		if o, ok := other.operatorHashes[svc]; ok {
			known = true
			if o != h {
				return true, false
			}
		}
	}
	return known, known
}

// tokenHashed says the files hold the hash of the operator token itself,
// as releases rendered before per-service credentials did: one value in
// every file.
func (d DeployedSecrets) tokenHashed() bool {
	if _, ok := d.operatorHashes[""]; ok {
		return true
	}
	first := ""
	for _, h := range d.operatorHashes {
		if first != "" && h != first {
			return false
		}
		first = h
	}
	return len(d.operatorHashes) > 1
}

// Differ lists the keys of Secrets (and ClusterSecrets) whose values d and
// other both know and that differ, sorted. The operator token is compared
// by the hashes of its credentials; with token, the operator's (or ""),
// hashes of token in the form of an older release are the same token as
// the newer ones a deploy replaces them with.
func (d DeployedSecrets) Differ(other DeployedSecrets, token string) []string {
	var out []string
	for _, k := range deployedSecrets {
		if k == "LUCID_OPERATOR_TOKEN" {
			if token != "" && d.host == other.host && d.holdsToken(token) && other.holdsToken(token) {
				continue
			}
			if known, same := d.sameOperatorToken(other); known && !same {
				out = append(out, k)
			}
			continue
		}
		a, b := d.Values[k], other.Values[k]
		if a != "" && b != "" && a != b {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// OperatorValues are the secrets as the operator's env file holds them,
// taken from d: every one d holds as it is, and the previous values of
// rotated ones (PreviousKeys). values is the operator's file
// as it is; the operator token, of which a host keeps only the hashes of
// its credentials, is reported in unknown when values' does not match
// them.
func (d DeployedSecrets) OperatorValues(values map[string]string) (set map[string]string, unknown []string) {
	set = map[string]string{}
	for k, v := range d.Previous {
		set[k] = v
	}
	for _, k := range deployedSecrets {
		if v, ok := d.Values[k]; ok {
			set[k] = v
			continue
		}
		if k == "LUCID_OPERATOR_TOKEN" {
			if known, same := d.operatorTokenIs(values[k]); known && !same {
				unknown = append(unknown, k)
			}
		}
	}
	return set, unknown
}

// envFileError names a deployed env file that does not parse; the parse
// error names the line, never a value.
type envFileError struct {
	path string
	err  error
}

func (e *envFileError) Error() string { return "env file " + e.path + ": " + e.err.Error() }
func (e *envFileError) Unwrap() error { return e.err }
