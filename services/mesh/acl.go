package mesh

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/pkg/api/meshapi"
	"github.com/pickme/lucid/pkg/consulacl"
)

// Consul runs with ACLs and default deny (meshapi.ConsulAgentConfig). The
// controller holds the management token: it registers with it, and keeps
// each service's policy (consulacl.Grants) and token in place, the token's
// ids derived from the management token (meshapi.ConsulToken) so that the
// service's own CONSUL_HTTP_TOKEN matches without anything being handed
// over. Keeping is idempotent: it runs on every sync, so a restart, a
// second controller, a Consul that lost its state or an edited policy all
// end in the same place.

// errUnknownManagement says Consul does not know the management token.
var errUnknownManagement = errors.New("consul does not know CONSUL_HTTP_TOKEN: it must be the management token Consul was started with (meshapi.ConsulAgentConfig)")

// errACLDisabled says Consul runs without ACLs.
var errACLDisabled = errors.New("consul runs without ACLs, so anyone who reaches it can read and write its catalog: start it with the configuration of meshapi.ConsulAgentConfig (docs/mesh.md)")

// ensureGrants creates or repairs every grant's policy and token.
func (g *registrar) ensureGrants(ctx context.Context) error {
	if g.management == "" {
		return nil
	}
	var errs []error
	for _, gr := range consulacl.Grants {
		err := g.ensurePolicy(ctx, gr, true)
		if err == nil {
			err = g.ensureToken(ctx, gr, true)
		}
		switch {
		case err == nil:
		case isACLDisabled(err):
			return errACLDisabled
		case aclNotFound(err):
			// Not found even on a create: the token we present is unknown.
			return errUnknownManagement
		default:
			errs = append(errs, fmt.Errorf("consul ACL of %s: %w", gr.Service, err))
		}
	}
	return errors.Join(errs...)
}

func isACLDisabled(err error) bool {
	var se consul.StatusError
	return errors.As(err, &se) && se.Code == http.StatusUnauthorized && strings.Contains(se.Body, "ACL support disabled")
}

// ensurePolicy makes gr's policy exist with gr's rules. When another
// controller creates it first, the one that lost reads it again (once).
func (g *registrar) ensurePolicy(ctx context.Context, gr consulacl.Grant, retry bool) error {
	acl := g.consul.ACL()
	have, _, err := acl.PolicyReadByName(gr.Policy, (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil && !aclNotFound(err) { // not found, or (then the create says so) our token unknown
		return fmt.Errorf("read policy %s: %w", gr.Policy, err)
	}
	want := &consul.ACLPolicy{Name: gr.Policy, Description: gr.Description, Rules: gr.Rules}
	wo := (&consul.WriteOptions{}).WithContext(ctx)
	switch {
	case have == nil:
		if _, _, err := acl.PolicyCreate(want, wo); err != nil {
			if retry && strings.Contains(err.Error(), "already exists") {
				return g.ensurePolicy(ctx, gr, false)
			}
			return fmt.Errorf("create policy %s: %w", gr.Policy, err)
		}
		g.logger.Info("consul policy created", "policy", gr.Policy, "service", gr.Service)
	case have.Rules != want.Rules || have.Description != want.Description:
		want.ID = have.ID
		if _, _, err := acl.PolicyUpdate(want, wo); err != nil {
			return fmt.Errorf("update policy %s: %w", gr.Policy, err)
		}
		g.logger.Warn("consul policy differed from Lucid's and was put back", "policy", gr.Policy, "service", gr.Service)
	}
	return nil
}

// ensureToken makes gr's service's token exist, with the derived ids and
// gr's policy as its only privilege.
func (g *registrar) ensureToken(ctx context.Context, gr consulacl.Grant, retry bool) error {
	acl := g.consul.ACL()
	accessor, secret := meshapi.ConsulToken(g.management, gr.Service)
	want := &consul.ACLToken{
		AccessorID:  accessor,
		SecretID:    secret,
		Description: "Lucid " + gr.Service + " (managed by " + managedBy + ")",
		Policies:    []*consul.ACLTokenPolicyLink{{Name: gr.Policy}},
	}
	wo := (&consul.WriteOptions{}).WithContext(ctx)
	have, _, err := acl.TokenRead(accessor, (&consul.QueryOptions{}).WithContext(ctx))
	switch {
	case aclNotFound(err):
		if _, _, err := acl.TokenCreate(want, wo); err != nil {
			if retry && strings.Contains(err.Error(), "already in use") {
				return g.ensureToken(ctx, gr, false)
			}
			return fmt.Errorf("create token %s: %w", accessor, err)
		}
		g.logger.Info("consul token created", "service", gr.Service, "accessor_id", accessor, "policy", gr.Policy)
		// A new token of ours where there was none: the management token
		// changed (or Consul lost its state). A token derived from an
		// earlier management token must not keep working.
		return g.dropEarlierTokens(ctx, want.Description, accessor)
	case err != nil:
		return fmt.Errorf("read token %s: %w", accessor, err)
	case have.SecretID != secret:
		// Secrets cannot be changed; the accessor id is Lucid's, so the
		// token is replaced.
		if _, err := acl.TokenDelete(accessor, wo); err != nil {
			return fmt.Errorf("replace token %s: %w", accessor, err)
		}
		g.logger.Warn("consul token had another secret and is replaced", "service", gr.Service, "accessor_id", accessor)
		return g.ensureToken(ctx, gr, false)
	case !onlyPolicy(have, gr.Policy) || have.Description != want.Description:
		if _, _, err := acl.TokenUpdate(want, wo); err != nil {
			return fmt.Errorf("update token %s: %w", accessor, err)
		}
		g.logger.Warn("consul token's privileges differed from Lucid's and were put back", "service", gr.Service, "accessor_id", accessor, "policy", gr.Policy)
	}
	return nil
}

// dropEarlierTokens deletes the tokens Lucid made for the same service
// (same description) under another accessor id, derived from an earlier
// management token.
func (g *registrar) dropEarlierTokens(ctx context.Context, description, accessor string) error {
	acl := g.consul.ACL()
	tokens, _, err := acl.TokenList((&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list tokens: %w", err)
	}
	for _, t := range tokens {
		if t.Description != description || t.AccessorID == accessor {
			continue
		}
		if _, err := acl.TokenDelete(t.AccessorID, (&consul.WriteOptions{}).WithContext(ctx)); err != nil {
			return fmt.Errorf("delete earlier token %s: %w", t.AccessorID, err)
		}
		g.logger.Warn("consul token derived from an earlier management token deleted", "accessor_id", t.AccessorID)
	}
	return nil
}

// onlyPolicy reports whether policy is all t grants.
func onlyPolicy(t *consul.ACLToken, policy string) bool {
	return len(t.Policies) == 1 && t.Policies[0].Name == policy &&
		len(t.Roles) == 0 && len(t.ServiceIdentities) == 0 && len(t.NodeIdentities) == 0 && len(t.TemplatedPolicies) == 0 &&
		t.ExpirationTime == nil
}

// aclNotFound reports whether err is Consul saying "ACL not found": no
// token with that accessor id, no policy of that name (403 before 1.15,
// 404 after), or, alas in the same words, that the request's own token is
// unknown; a create that follows tells the two apart.
func aclNotFound(err error) bool {
	var se consul.StatusError
	return errors.As(err, &se) && (se.Code == http.StatusNotFound || (se.Code == http.StatusForbidden && strings.Contains(se.Body, "ACL not found")))
}
