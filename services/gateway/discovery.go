package gateway

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pickme/lucid/pkg/consulacl"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
)

// consulToken reads the gateway's own Consul token. Consul runs with ACLs
// and default deny; the mesh controller keeps this token, whose only
// policy reads services and nodes (pkg/consulacl).
func consulToken(r *envconfig.Reader) string {
	return consulacl.Token(r, `the gateway's own Consul token: the secret of meshapi.ConsulToken(management token, "gateway")`)
}

// discover starts following Consul's healthy instances of each service
// with blocking queries (no polling storm): a change reaches the pool as
// soon as Consul sees it, and when Consul is unreachable the last good set
// is kept. Services are registered in Consul under their catalog names.
// The queries carry the gateway's own token, given explicitly, never
// picked up from the process environment.
func (a *App) discover(ctx context.Context) error {
	client, err := consul.NewClient(&consul.Config{Address: a.consulAddr, Scheme: "http", Token: a.consulToken})
	if err != nil {
		return fmt.Errorf("consul at %s: %w", a.consulAddr, err)
	}
	for svc, p := range a.pools {
		if svc == routetable.AuthService {
			continue
		}
		go a.watch(ctx, client, svc, p)
	}
	return nil
}

func (a *App) watch(ctx context.Context, client *consul.Client, svc string, p *pool) {
	var index uint64
	backoff := service.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for ctx.Err() == nil {
		opts := (&consul.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx)
		entries, meta, err := client.Health().Service(svc, "", true, opts)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.logger.Warn("consul query failed; keeping the last known instances", "service", svc, "error", err)
			if !backoff.Wait(ctx) {
				return
			}
			continue
		}
		backoff.Reset()
		switch {
		case meta.LastIndex < index, meta.LastIndex == 0:
			index = 1 // went backwards (a restart) or unset: start over, still blocking
		default:
			index = meta.LastIndex
		}
		var urls []*url.URL
		for _, e := range entries {
			host := e.Service.Address
			if host == "" {
				host = e.Node.Address
			}
			urls = append(urls, &url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(e.Service.Port))})
		}
		p.set(urls)
	}
}
