// Package consulacl is how Lucid runs Consul with ACLs: default deny, a
// management token that only the mesh controller (and the operator) holds,
// and for every other service that talks to Consul a token of its own whose
// policy grants what that service does and nothing more.
//
// The parts:
//
//   - meshapi.ConsulAgentConfig is the agent's configuration that turns
//     ACLs on, for whatever starts Consul (the local stack, the compose
//     renderer);
//   - Grants are the services' policies; the mesh controller creates them
//     and each service's token, with the ids meshapi.ConsulToken derives
//     from the management token, on every sync;
//   - Token reads CONSUL_HTTP_TOKEN, the management token for the
//     controller and its own derived secret for any other service.
//
// Consul's API client would read CONSUL_HTTP_TOKEN from the process
// environment by itself; Lucid's services read it through envconfig like
// every other setting and hand it to the client explicitly.
package consulacl

import (
	"errors"
	"regexp"

	"github.com/pickme/lucid/pkg/envconfig"
)

// EnvToken names the variable that carries a service's Consul token.
const EnvToken = "CONSUL_HTTP_TOKEN"

// uuidPattern is the shape of a Consul token's secret: Consul wants UUIDs
// (a management token of another shape is deprecated).
var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// CheckToken says why tok cannot be a Consul token, or nil. Its value
// never appears in the error.
func CheckToken(tok string) error {
	if !uuidPattern.MatchString(tok) {
		return errors.New("must be a UUID (a Consul token's secret, e.g. from uuidgen)")
	}
	return nil
}

// Token reads CONSUL_HTTP_TOKEN from r: required (why says what for) and a
// UUID. Problems are recorded in r, without the value.
func Token(r *envconfig.Reader, why string) string {
	tok := r.Secret(EnvToken, 36, why)
	if tok != "" {
		if err := CheckToken(tok); err != nil {
			r.Fail(EnvToken, "%v", err)
		}
	}
	return tok
}

// A Grant is what one Lucid service may do in Consul: the policy of its
// token.
type Grant struct {
	// Service is the catalog name of the service the token is for.
	Service string
	// Policy is the name of its ACL policy.
	Policy string
	// Description says what the policy is for, in Consul's listings.
	Description string
	// Rules are the policy's rules, in Consul's HCL.
	Rules string
}

// Grants are the services with a Consul token of their own. The mesh
// controller registers everything with the management token; the gateway
// only follows healthy instances, which needs reading services and the
// nodes they run on (health results are filtered by both).
var Grants = []Grant{
	{
		Service:     "gateway",
		Policy:      "lucid-gateway",
		Description: "Lucid gateway: reads services, nodes and their health (managed by lucid-mesh)",
		Rules: `service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
`,
	},
}
