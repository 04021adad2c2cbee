package gateway

import (
	"fmt"
	"net/url"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/routetable"
)

// upstreams maps each route's service to its base URL: LUCID_<NAME>_URL
// (AUTH_SERVICE_URL for auth), else the catalog port on loopback.
func upstreams(routes []routetable.Route, lookup func(string) string) (map[string]*url.URL, error) {
	out := map[string]*url.URL{}
	for _, r := range routes {
		if _, ok := out[r.Service]; ok {
			continue
		}
		key, def := catalog.URLKey(r.Service), ""
		if r.Service == routetable.AuthService {
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
