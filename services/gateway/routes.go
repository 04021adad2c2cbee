package gateway

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/catalog"
)

// Route sends requests whose path starts with Prefix to a service.
type Route struct {
	Prefix string
	// Service is a catalog name, or "auth" for the Phase 1 auth service.
	Service string
	// Strip removes Prefix from the path sent upstream.
	Strip bool
	// Public routes need no token (they are still rate limited by IP).
	Public bool
	// Methods, if set, are the only methods allowed.
	Methods []string
	// Timeout bounds the wait for the upstream's response headers.
	Timeout time.Duration
}

// DefaultRoutes is DESIGN.md's route table.
func DefaultRoutes() []Route {
	const t = 30 * time.Second
	return []Route{
		{Prefix: "/auth", Service: "auth", Public: true, Timeout: t},
		{Prefix: "/blockchain", Service: "engine", Strip: true, Timeout: t},
		{Prefix: "/api/v1/transactions", Service: "engine", Timeout: t},
		{Prefix: "/api/v1/anchors", Service: "anchoring", Timeout: t},
		{Prefix: "/api/v1/blocks", Service: "blocks", Timeout: t},
		{Prefix: "/api/v1/chain", Service: "blocks", Timeout: 5 * time.Minute}, // audits stream
		{Prefix: "/api/v1/chunks", Service: "datachain", Timeout: 2 * time.Minute},
		{Prefix: "/api/v1/sessions", Service: "datachain", Timeout: t},
	}
}

// upstreams maps each route's service to its base URL: LUCID_<NAME>_URL
// (AUTH_SERVICE_URL for auth), else the catalog port on loopback.
func upstreams(routes []Route, lookup func(string) string) (map[string]*url.URL, error) {
	out := map[string]*url.URL{}
	for _, r := range routes {
		if _, ok := out[r.Service]; ok {
			continue
		}
		key, def := "LUCID_"+strings.ToUpper(r.Service)+"_URL", ""
		if r.Service == "auth" {
			key, def = "AUTH_SERVICE_URL", "http://127.0.0.1:8081"
		} else if svc, ok := catalog.Lookup(r.Service); ok {
			def = fmt.Sprintf("http://127.0.0.1:%d", svc.Port)
		} else {
			return nil, fmt.Errorf("route %s: unknown service %q", r.Prefix, r.Service)
		}
		raw := lookup(key)
		if raw == "" {
			raw = def
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%s=%q is not an absolute URL", key, raw)
		}
		out[r.Service] = u
	}
	return out, nil
}
