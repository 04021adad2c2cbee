package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pickme/lucid/pkg/api"
)

// How long an instance that failed a request stays out (passive health),
// and how often instances are probed (active health).
const (
	ejectFor      = 10 * time.Second
	probeInterval = 5 * time.Second
)

// errNoUpstream means every instance of a service is out.
var errNoUpstream = errors.New("no healthy instance")

// instance is one address of a service.
type instance struct {
	url       *url.URL
	client    *fasthttp.HostClient // its keep-alive connections
	downUntil atomic.Int64         // unix nanos; passive ejection
	probeDown atomic.Bool          // active check failing
}

func (i *instance) healthy(now time.Time) bool {
	return !i.probeDown.Load() && i.downUntil.Load() < now.UnixNano()
}

// pool is the instances of one service, from configuration or Consul,
// picked round robin among the healthy ones.
type pool struct {
	service string
	tls     *tls.Config // the mesh's client side, nil when it is off
	mu      sync.RWMutex
	all     []*instance
	next    atomic.Uint64
}

// newPool makes the pool of service; with tlsConfig (mTLS) its instances
// are called over https whatever scheme their addresses came with.
func newPool(service string, tlsConfig *tls.Config, urls ...*url.URL) *pool {
	p := &pool{service: service, tls: tlsConfig}
	p.set(urls)
	return p
}

// set replaces the instance list, keeping the health state and
// connections of instances that stay and closing those of the others.
func (p *pool) set(urls []*url.URL) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := map[string]*instance{}
	for _, i := range p.all {
		old[i.url.String()] = i
	}
	var next []*instance
	for _, u := range urls {
		if p.tls != nil && u.Scheme == "http" {
			tu := *u
			tu.Scheme = "https"
			u = &tu
		}
		if i, ok := old[u.String()]; ok {
			next = append(next, i)
			delete(old, u.String())
		} else {
			next = append(next, &instance{url: u, client: newHostClient(u, p.tls)})
		}
	}
	p.all = next
	for _, gone := range old {
		gone.client.CloseIdleConnections()
	}
}

// close drops every instance's idle connections.
func (p *pool) close() {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, i := range p.all {
		i.client.CloseIdleConnections()
	}
}

// pick returns a healthy instance other than the ones in skip.
func (p *pool) pick(now time.Time, skip ...*instance) (*instance, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := len(p.all)
	start := p.next.Add(1)
	for k := 0; k < n; k++ {
		i := p.all[(int(start)+k)%n]
		if i.healthy(now) && !slices.Contains(skip, i) {
			return i, nil
		}
	}
	return nil, fmt.Errorf("%s: %w (%d known)", p.service, errNoUpstream, n)
}

// eject takes an instance out for a while after a failed request, unless
// it is the last healthy one: a lone instance's passing fault must not
// become ten seconds of refusals.
func (p *pool) eject(i *instance, now time.Time) {
	p.mu.RLock()
	others := 0
	for _, o := range p.all {
		if o != i && o.healthy(now) {
			others++
		}
	}
	p.mu.RUnlock()
	if others > 0 {
		i.downUntil.Store(now.Add(ejectFor).UnixNano())
	}
}

// healthyURLs lists the instances in service.
func (p *pool) healthyURLs(now time.Time) []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	var out []string
	for _, i := range p.all {
		if i.healthy(now) {
			out = append(out, i.url.String())
		}
	}
	return out
}

// probe checks every instance's /health once.
func (p *pool) probe(ctx context.Context, client *http.Client) {
	p.mu.RLock()
	all := slices.Clone(p.all)
	p.mu.RUnlock()
	var wg sync.WaitGroup
	for _, i := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			health := api.Request{Method: http.MethodGet, URL: strings.TrimSuffix(i.url.String(), "/") + "/health"}
			i.probeDown.Store(api.Do(ctx, client, health, nil) != nil)
		}()
	}
	wg.Wait()
}

// probeLoop runs active health checks until ctx ends.
func (p *pool) probeLoop(ctx context.Context, client *http.Client) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		p.probe(ctx, client)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
