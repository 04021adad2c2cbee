package mesh

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// The typed configs a bootstrap names, so their Any values resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/pickme/lucid/pkg/catalog"
)

// parseBootstrap reads rendered YAML into Envoy's Bootstrap message, as
// Envoy does, refusing unknown fields.
func parseBootstrap(t *testing.T, data []byte) *bootstrapv3.Bootstrap {
	t.Helper()
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		t.Fatalf("not an Envoy bootstrap: %v", err)
	}
	return &b
}

// validateAll runs the protoc-gen-validate rules on m and, since those
// stop at an Any, on every typed config inside it.
func validateAll(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	var err error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		visit := func(msg protoreflect.Message) {
			if err != nil {
				return
			}
			inner := msg.Interface()
			if a, ok := inner.(*anypb.Any); ok {
				var uerr error
				if inner, uerr = a.UnmarshalNew(); uerr != nil {
					err = fmt.Errorf("typed config %s: %w", a.TypeUrl, uerr)
					return
				}
			}
			err = validateAll(inner)
		}
		switch {
		case fd.IsList():
			for i := range v.List().Len() {
				visit(v.List().Get(i).Message())
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					visit(mv.Message())
				}
				return err == nil
			})
		default:
			visit(v.Message())
		}
		return err == nil
	})
	return err
}

// TestEnvoyBootstrapsValidate renders every service's bootstrap and checks
// it against Envoy's own schema and validation rules, then checks what it
// says: who may call in, and whom each upstream cluster must be.
func TestEnvoyBootstrapsValidate(t *testing.T) {
	for _, s := range catalog.Services {
		t.Run(s.Name, func(t *testing.T) {
			data, err := envoyBootstrap(s, envoyOptionsFrom(url.Values{}))
			if err != nil {
				t.Fatal(err)
			}
			b := parseBootstrap(t, data)
			if err := validateAll(b); err != nil {
				t.Fatalf("invalid bootstrap: %v\n%s", err, data)
			}
			if a := b.Admin.GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 9901 {
				t.Errorf("admin on %v", a)
			}

			inbound := b.StaticResources.Listeners[0]
			if s.Public {
				if inbound.FilterChains[0].TransportSocket != nil {
					t.Error("a public service's sidecar asks clients for mesh certificates")
				}
			} else {
				var down tlsv3.DownstreamTlsContext
				if err := inbound.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&down); err != nil {
					t.Fatal(err)
				}
				if !down.RequireClientCertificate.GetValue() {
					t.Error("inbound listener does not require client certificates")
				}
				var admitted []string
				for _, m := range down.CommonTlsContext.GetValidationContext().GetMatchTypedSubjectAltNames() {
					admitted = append(admitted, strings.TrimPrefix(m.Matcher.GetExact(), "spiffe://lucid/service/"))
				}
				if len(admitted) == 0 || !slices.Equal(admitted, catalog.Callers(s.Name)) { // empty would admit anyone
					t.Errorf("inbound admits %v, allow list says %v", admitted, catalog.Callers(s.Name))
				}
			}

			want := slices.Clone(s.Calls)
			if s.Name != catalog.MeshService {
				want = append(want, catalog.MeshService)
			}
			var clusters []string
			for _, c := range b.StaticResources.Clusters[1:] {
				var up tlsv3.UpstreamTlsContext
				if err := c.TransportSocket.GetTypedConfig().UnmarshalTo(&up); err != nil {
					t.Fatal(err)
				}
				name := strings.TrimPrefix(c.Name, "out_")
				sans := up.CommonTlsContext.GetValidationContext().GetMatchTypedSubjectAltNames()
				if len(sans) != 1 || sans[0].Matcher.GetExact() != "spiffe://lucid/service/"+name {
					t.Errorf("cluster %s accepts %v", c.Name, sans)
				}
				clusters = append(clusters, name)
			}
			if !slices.Equal(clusters, want) {
				t.Errorf("upstream clusters %v, want %v", clusters, want)
			}
		})
	}
}

// TestEnvoyCertDir: the certificate directory is configurable, and must
// be absolute.
func TestEnvoyCertDir(t *testing.T) {
	gw, _ := catalog.Lookup("gateway")
	data, err := envoyBootstrap(gw, envoyOptionsFrom(url.Values{"cert_dir": {"/run/certs"}}))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "/run/certs/key.pem") || strings.Contains(string(data), "/etc/lucid/mesh") {
		t.Error("cert_dir not applied")
	}
	if _, err := envoyBootstrap(gw, envoyOptionsFrom(url.Values{"cert_dir": {"certs"}})); err == nil {
		t.Error("a relative cert_dir was accepted")
	}
}
