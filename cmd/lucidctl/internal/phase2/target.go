// Package phase2 implements `lucidctl bench` and `lucidctl validate
// phase2`: the Phase 2 benchmarks and integration checks, measured on the
// real thing, against the local stack or a gateway URL.
package phase2

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/meshtls"
)

// endpoints are where a stack answers.
type endpoints struct {
	Gateway string            // public URL
	Service map[string]string // internal service URLs (local stack only)
	Consul  string            // local stack only
	secret  []byte            // JWT_SECRET_KEY
	mesh    string            // the mesh bootstrap token, if known
}

// targetFlags choose the stack.
type targetFlags struct {
	target     string
	portOffset int
	envFile    string
}

// resolve finds the stack's endpoints: the local one (lucidctl up), a
// gateway URL, or a target of lucid.yaml (its gateway).
func (f targetFlags) resolve(ctx context.Context, env *cli.Env) (*endpoints, error) {
	cfg, err := env.Config()
	if err != nil {
		return nil, err
	}
	path := f.envFile
	if path == "" {
		path = cfg.Abs(cfg.Local.EnvFile)
	}
	vars, err := envfile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		vars = map[string]string{}
	} else if err != nil {
		return nil, err
	}
	e := &endpoints{Service: map[string]string{}, mesh: vars["LUCID_MESH_TOKEN"]}
	secret := env.Getenv("JWT_SECRET_KEY")
	if secret == "" {
		secret = vars["JWT_SECRET_KEY"]
	}
	if secret == "" {
		return nil, cli.WithHint(fmt.Errorf("JWT_SECRET_KEY is in neither the environment nor %s", path), "the benchmarks sign their own tokens with the gateway's secret")
	}
	e.secret = []byte(secret)
	local := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port+f.portOffset) }
	switch {
	case f.target == "" || f.target == "local":
		gw, _ := catalog.Lookup("gateway")
		e.Gateway = "http://" + local(gw.Port)
		for _, s := range catalog.Services {
			if s.Public {
				continue
			}
			e.Service[s.Name] = scheme(ctx, local(s.Port)) + "://" + local(s.Port)
		}
		e.Consul = "http://" + local(8500)
	case strings.HasPrefix(f.target, "http://") || strings.HasPrefix(f.target, "https://"):
		e.Gateway = strings.TrimRight(f.target, "/")
	default:
		t, err := cfg.Target(f.target)
		if err != nil {
			return nil, cli.Usage(err)
		}
		gw, _ := catalog.Lookup("gateway")
		e.Gateway = "http://" + t.Host + ":" + strconv.Itoa(gw.Port)
	}
	return e, nil
}

// scheme tells whether a local service speaks TLS (the mesh is on).
func scheme(ctx context.Context, hostport string) string {
	c := insecureClient(2 * time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+hostport+"/health", nil)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		return "https"
	}
	return "http"
}

// insecureClient reads health endpoints over TLS without a certificate
// check: they carry nothing secret.
func insecureClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

// token signs a JWT for the gateway.
func (e *endpoints) token(sub string, tier auth.Tier) (string, error) {
	tok, _, err := auth.Mint(e.secret, auth.MintOptions{Subject: sub, Tier: tier, TTL: time.Hour, Now: time.Now()})
	return tok, err
}

// meshClient is a client holding a mesh identity (the gateway's: it may
// call every service), for calling services directly over mTLS.
func (e *endpoints) meshClient(ctx context.Context) (*http.Client, error) {
	meshURL := e.Service[catalog.MeshService]
	if e.mesh == "" || !strings.HasPrefix(meshURL, "https://") {
		return nil, errors.New("the mesh is off or its token unknown")
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	id, err := meshtls.Obtain(octx, "gateway", meshtls.NewRemote(meshURL, e.mesh), meshtls.Options{})
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: id.Transport(nil, func(string) bool { return true })}, nil
}
