package meshapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
)

// Every service's mesh credentials are derived from two secrets the
// operator and the mesh controller hold: the mesh token (LUCID_MESH_TOKEN
// of the controller) and Consul's management token. A service is given
// only what is derived for its own name, so what it holds yields only its
// own identity: a compromised gateway cannot obtain another service's
// certificate, and its Consul token can only read. The controller, which
// holds both secrets, derives the same values to check them.

// derive is HMAC-SHA256(secret, purpose "/" name), hex.
func derive(secret, purpose, name string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(purpose + "/" + name))
	return hex.EncodeToString(m.Sum(nil))
}

// EnrolmentToken is the credential service presents to the controller to
// obtain its own leaf (and nothing else): LUCID_MESH_TOKEN in its
// environment. meshToken is the controller's.
func EnrolmentToken(meshToken, service string) string {
	return derive(meshToken, "lucid-mesh-enrolment-v1", service)
}

// OperatorBundle is the name lucidctl asks the trust bundle for, and the
// controller MACs it with EnrolmentToken(meshToken, OperatorBundle): a key
// no container holds but the controller. A bundle checked with a
// service's enrolment token could be forged by whoever took that service
// (the gateway, facing the Internet), and lucidctl sends the operator's
// credentials to the services that bundle vouches for, the controller's
// among them.
const OperatorBundle = "operator"

// ConsulToken is the Consul ACL token of service, derived from the
// management token: an accessor id and a secret id, both UUIDs as Consul
// wants them. The controller creates it with the service's policy; the
// service reads the secret from CONSUL_HTTP_TOKEN.
func ConsulToken(managementToken, service string) (accessorID, secretID string) {
	return uuidOf(derive(managementToken, "lucid-consul-accessor-v1", service)), uuidOf(derive(managementToken, "lucid-consul-secret-v1", service))
}

// uuidOf shapes 32 hex digits as a version-4, RFC 4122 variant UUID.
func uuidOf(h string) string {
	b, _ := hex.DecodeString(h[:32])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ConsulAgentConfig is the configuration (JSON, as `consul agent
// -config-file` and the official image's CONSUL_LOCAL_CONFIG take it) of
// a Consul agent with ACLs on and nothing allowed without a token;
// managementToken (a UUID) is the management token and the agent's own.
// enable_token_persistence keeps tokens set later through the agent's API
// across a restart. A file must have the .json extension (Consul reads
// the format from it), and, holding the management token, mode 0600.
func ConsulAgentConfig(managementToken string) ([]byte, error) {
	// Consul wants the 36-character form (others are deprecated there).
	if _, err := uuid.Parse(managementToken); err != nil || len(managementToken) != 36 {
		return nil, errors.New("the management token for Consul must be a UUID")
	}
	type tokens struct {
		InitialManagement string `json:"initial_management"`
		Agent             string `json:"agent"`
	}
	type acl struct {
		Enabled                bool   `json:"enabled"`
		DefaultPolicy          string `json:"default_policy"`
		EnableTokenPersistence bool   `json:"enable_token_persistence"`
		Tokens                 tokens `json:"tokens"`
	}
	return json.Marshal(struct {
		ACL acl `json:"acl"`
	}{acl{Enabled: true, DefaultPolicy: "deny", EnableTokenPersistence: true, Tokens: tokens{managementToken, managementToken}}})
}
