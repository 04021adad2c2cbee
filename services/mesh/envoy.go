package mesh

import (
	"net/http"
	"net/url"
	"path"

	"go.yaml.in/yaml/v3"

	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/meshca"
	"github.com/pickme/lucid/pkg/service"
)

// Sidecar port layout: a service on port P gets its sidecar's inbound
// (mTLS) listener on P+inboundShift, and reaches an upstream on port U
// through a local plain listener on 127.0.0.1:U+outboundShift.
const (
	inboundShift  = 10000
	outboundShift = 20000
	envoyAdmin    = 9901
)

// envoyOptions are what a caller may change in a rendered bootstrap.
type envoyOptions struct {
	// certDir holds cert.pem (chain), key.pem and bundle.pem.
	certDir string
}

func envoyOptionsFrom(q url.Values) envoyOptions {
	o := envoyOptions{certDir: "/etc/lucid/mesh"}
	if d := q.Get("cert_dir"); d != "" {
		o.certDir = d
	}
	return o
}

// m is a YAML mapping; keys are sorted when marshalled, which keeps the
// output stable.
type m = map[string]any

func socketAddress(host string, port int) m {
	return m{"socket_address": m{"address": host, "port_value": port}}
}

func sanMatchers(services []string) []any {
	var out []any
	for _, s := range services {
		out = append(out, m{"san_type": "URI", "matcher": m{"exact": meshca.SPIFFEID(s).String()}})
	}
	return out
}

// envoyBootstrap renders the bootstrap of s's sidecar: an inbound mTLS
// listener that admits exactly the services allowed to call s (plain for a
// public service), a cluster to the local app, and for each service s may call a local listener and an mTLS
// cluster that accepts only that service's identity.
func envoyBootstrap(s catalog.Service, o envoyOptions) ([]byte, error) {
	if !path.IsAbs(o.certDir) {
		return nil, service.Errorf(http.StatusBadRequest, service.CodeBadRequest, "cert_dir must be an absolute path")
	}
	tlsFiles := m{
		"tls_certificates": []any{m{
			"certificate_chain": m{"filename": path.Join(o.certDir, "cert.pem")},
			"private_key":       m{"filename": path.Join(o.certDir, "key.pem")},
		}},
	}
	common := func(peers []string) m {
		c := m{"validation_context": m{
			"trusted_ca":                    m{"filename": path.Join(o.certDir, "bundle.pem")},
			"match_typed_subject_alt_names": sanMatchers(peers),
		}}
		for k, v := range tlsFiles {
			c[k] = v
		}
		c["tls_params"] = m{"tls_minimum_protocol_version": "TLSv1_3"}
		return c
	}
	hcm := func(prefix, cluster string) m {
		return m{
			"name": "envoy.filters.network.http_connection_manager",
			"typed_config": m{
				"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
				"stat_prefix": prefix,
				"route_config": m{"name": prefix, "virtual_hosts": []any{m{
					"name": prefix, "domains": []any{"*"},
					"routes": []any{m{"match": m{"prefix": "/"}, "route": m{"cluster": cluster, "timeout": "0s"}}},
				}}},
				"http_filters": []any{m{
					"name":         "envoy.filters.http.router",
					"typed_config": m{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
				}},
			},
		}
	}

	inbound := m{"filters": []any{hcm("inbound_"+s.Name, "local_app")}}
	callers := catalog.Callers(s.Name)
	switch {
	case s.Public:
		// Clients hold no mesh certificate: a public service's sidecar
		// takes them in plain, as the service itself does.
	case len(callers) == 0:
		// An empty SAN list would admit any mesh identity.
		return nil, service.Errorf(http.StatusConflict, service.CodeConflict, "no service may call %s, so its sidecar would have no inbound listener", s.Name)
	default:
		inbound["transport_socket"] = m{
			"name": "envoy.transport_sockets.tls",
			"typed_config": m{
				"@type":                      "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
				"require_client_certificate": true,
				"common_tls_context":         common(callers),
			},
		}
	}
	listeners := []any{m{
		"name":          "inbound",
		"address":       socketAddress("0.0.0.0", s.Port+inboundShift),
		"filter_chains": []any{inbound},
	}}
	clusters := []any{m{
		"name":            "local_app",
		"type":            "STATIC",
		"connect_timeout": "1s",
		"load_assignment": m{"cluster_name": "local_app", "endpoints": []any{m{"lb_endpoints": []any{
			m{"endpoint": m{"address": socketAddress("127.0.0.1", s.Port)}},
		}}}},
	}}

	upstreams := append([]string{}, s.Calls...)
	if s.Name != catalog.MeshService {
		upstreams = append(upstreams, catalog.MeshService)
	}
	for _, name := range upstreams {
		up, _ := catalog.Lookup(name)
		cluster := "out_" + up.Name
		listeners = append(listeners, m{
			"name":          "outbound_" + up.Name,
			"address":       socketAddress("127.0.0.1", up.Port+outboundShift),
			"filter_chains": []any{m{"filters": []any{hcm("outbound_"+up.Name, cluster)}}},
		})
		clusters = append(clusters, m{
			"name":            cluster,
			"type":            "STRICT_DNS",
			"connect_timeout": "2s",
			"load_assignment": m{"cluster_name": cluster, "endpoints": []any{m{"lb_endpoints": []any{
				m{"endpoint": m{"address": socketAddress(up.Container, up.Port+inboundShift)}},
			}}}},
			"transport_socket": m{
				"name": "envoy.transport_sockets.tls",
				"typed_config": m{
					"@type":              "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
					"sni":                up.Name,
					"common_tls_context": common([]string{up.Name}),
				},
			},
		})
	}

	boot := m{
		"node":  m{"id": s.Container + "-sidecar", "cluster": s.Name},
		"admin": m{"address": socketAddress("127.0.0.1", envoyAdmin)},
		"static_resources": m{
			"listeners": listeners,
			"clusters":  clusters,
		},
	}
	return yaml.Marshal(boot)
}
