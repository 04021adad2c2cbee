package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/pickme/lucid/pkg/api/meshapi"
)

// managedBy marks, in Consul meta, the registrations this controller owns.
const managedBy = "lucid-mesh"

var externalBucket = []byte("external")

// errNoConsul is returned by registry calls when Consul is not configured.
var errNoConsul = errors.New("consul is not configured (CONSUL_HOST)")

// registrar keeps Consul's registrations in line with the stack and with
// the outside services registered through the API, which it keeps in bbolt
// so they survive a restart of the controller or of Consul.
type registrar struct {
	db      *bolt.DB
	consul  *consul.Client // nil without Consul
	desired []*consul.AgentServiceRegistration
	logger  *slog.Logger
	// management is Consul's management token, which consul carries: the
	// services' Consul tokens are derived from it (see acl.go).
	management string

	// refresh names registrations to send to Consul again even if they
	// look unchanged (what the comparison does not see, their checks,
	// changed); only the sync loop touches it once it runs.
	refresh map[string]bool

	// syncs counts the rounds of sync by result (nil: not counted).
	syncs *prometheus.CounterVec

	mu       sync.Mutex
	lastErr  error
	lastSync time.Time
	synced   int
	// lagging names the registrations the catalog lags behind the agent
	// on, since lagSince; lagWarned says the log has said so.
	lagging   []string
	lagSince  time.Time
	lagWarned bool
	// unreadSince is when the catalog's reads began to fail, the first
	// failure of the current run (zero: the last read worked);
	// unreadWarned says the log has said so.
	unreadSince  time.Time
	unreadWarned bool
}

// catalogWait is how long a round of sync waits for the catalog to take
// what the agent holds: the agent copies a change within milliseconds
// when all is well.
const catalogWait = time.Second

// lagWarnAfter is how long the catalog may lack a registration before the
// log says so.
const lagWarnAfter = 10 * time.Second

func openRegistrar(path string, logger *slog.Logger) (*registrar, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(externalBucket)
		return err
	}); err != nil {
		_ = db.Close() // the open error is the one to report
		return nil, err
	}
	g := &registrar{db: db, logger: logger, refresh: map[string]bool{}}
	if err := g.dropForeignChecks(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return g, nil
}

// dropForeignChecks removes from the stored outside registrations a check
// that does not point at the registration's own address and port (kept
// from before that was required): Consul would go on probing whatever it
// names. The registration stays, without a check, and is sent to Consul
// again so the old check goes too.
func (g *registrar) dropForeignChecks() error {
	return g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(externalBucket)
		fixed := map[string][]byte{}
		err := b.ForEach(func(k, v []byte) error {
			var r meshapi.Registration
			if json.Unmarshal(v, &r) != nil || r.Check == "" || checkTarget(r.Check, r.Address, r.Port) == nil {
				return nil
			}
			g.logger.Warn("an outside registration's check does not point at its own address and port; the check is dropped", "id", r.ID, "service", r.Name)
			r.Check, r.Interval = "", ""
			data, err := json.Marshal(r)
			fixed[string(k)] = data
			return err
		})
		if err != nil {
			return err
		}
		for k, v := range fixed {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
			g.refresh[k] = true
		}
		return nil
	})
}

func (g *registrar) close() error { return g.db.Close() }

// run syncs every interval until ctx ends, then deregisters the stack.
// Syncing is a diff against the local agent's list, so a Consul restart
// (which forgets every registration) is repaired on the next round.
func (g *registrar) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		g.sync(ctx)
		select {
		case <-ctx.Done():
			g.deregisterStack()
			return
		case <-t.C:
		}
	}
}

// sync puts the services' Consul tokens in place, and registers what is
// missing or changed. Either failing does not hold the other back.
func (g *registrar) sync(ctx context.Context) {
	aclErr := g.ensureGrants(ctx)
	want, err := g.wanted()
	if err == nil {
		err = g.apply(ctx, want)
	}
	// A catalog that cannot be read (a cluster electing its leader) leaves
	// the last verdict standing: only a catalog seen lacking them counts.
	var lagging []string
	var lagErr error
	lagRead := false
	if err == nil {
		lagging, lagErr = g.catalogLag(ctx, want)
		lagRead = lagErr == nil
	}
	applied := err == nil
	err = errors.Join(aclErr, err)
	g.mu.Lock()
	defer g.mu.Unlock()
	if applied {
		g.noteRead(lagErr, time.Now())
	}
	switch {
	case err != nil && g.lastErr == nil:
		g.logger.Warn("consul sync failed; retrying", "error", err)
	case err == nil && g.lastErr != nil:
		g.logger.Info("consul sync recovered", "registrations", len(want))
	}
	if lagRead {
		g.noteLag(lagging)
	}
	g.lastErr = err
	result := "failed"
	if err == nil {
		g.lastSync, g.synced, result = time.Now(), len(want), "ok"
	}
	if g.syncs != nil {
		g.syncs.WithLabelValues(result).Inc()
	}
}

func (g *registrar) apply(ctx context.Context, want []*consul.AgentServiceRegistration) error {
	have, err := g.consul.Agent().ServicesWithFilterOpts("", (&consul.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	// One registration Consul refuses must not keep the others out.
	var errs []error
	for _, r := range want {
		if cur, ok := have[r.ID]; ok && sameRegistration(cur, r) && !g.refresh[r.ID] {
			continue
		}
		if err := g.consul.Agent().ServiceRegisterOpts(r, consul.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
			errs = append(errs, fmt.Errorf("register %s: %w", r.ID, err))
			continue
		}
		delete(g.refresh, r.ID)
		g.logger.Info("registered in consul", "id", r.ID, "service", r.Name, "address", fmt.Sprintf("%s:%d", r.Address, r.Port))
	}
	// Ours but no longer wanted (an outside service deleted while Consul
	// was away): remove.
	for id, cur := range have {
		if cur.Meta["managed_by"] == managedBy && !slices.ContainsFunc(want, func(r *consul.AgentServiceRegistration) bool { return r.ID == id }) {
			if err := g.consul.Agent().ServiceDeregisterOpts(id, (&consul.QueryOptions{}).WithContext(ctx)); err != nil {
				errs = append(errs, fmt.Errorf("deregister %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// catalogLag names the registrations the local agent holds that Consul's
// catalog lacks, or shows with a check status other than the agent's,
// after waiting up to catalogWait for them. The agent copies both there
// on its own; when a copy of its whole state fails (its first, made before
// the cluster had a leader or had written the ACL tokens, on a loaded Pi)
// it copies nothing more for 15 to 30 seconds. Until then the gateway,
// which reads the catalog, finds the services still critical, as they
// were registered.
func (g *registrar) catalogLag(ctx context.Context, want []*consul.AgentServiceRegistration) ([]string, error) {
	// Read each round: a single Pi's agent is named after its container,
	// whose hostname changes when it is made again.
	var self struct{ Config struct{ NodeName string } }
	if _, err := g.consul.Raw().Query("/v1/agent/self", &self, (&consul.QueryOptions{}).WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("the agent's node name: %w", err)
	}
	nodeName := self.Config.NodeName
	deadline := time.Now().Add(catalogWait)
	var index uint64
	var wait time.Duration // the first read does not block
	for {
		q := (&consul.QueryOptions{}).WithContext(ctx)
		checks, meta, err := g.consul.Health().Node(nodeName, (&consul.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("read the catalog's checks: %w", err)
		}
		node, _, err := g.consul.Catalog().Node(nodeName, q)
		if err != nil {
			return nil, fmt.Errorf("read the catalog: %w", err)
		}
		local, err := g.consul.Agent().ChecksWithFilterOpts("", q)
		if err != nil {
			return nil, fmt.Errorf("read the agent's checks: %w", err)
		}
		lagging := lagBehind(want, local, node, checks)
		// A blocking query needs a wait above zero: without one Consul
		// waits its default, five minutes.
		wait = time.Until(deadline)
		if len(lagging) == 0 || wait <= 0 || index != 0 && meta.LastIndex <= index {
			return lagging, nil // level, out of time, or unchanged for the wait (or gone back: a restart)
		}
		index = meta.LastIndex // block until the catalog's checks change, or the deadline
	}
}

// lagBehind names the registrations of want that the catalog's node lacks,
// or whose checks there differ in status from the agent's own.
func lagBehind(want []*consul.AgentServiceRegistration, local map[string]*consul.AgentCheck, node *consul.CatalogNode, checks consul.HealthChecks) []string {
	inCatalog := map[string]string{}
	for _, c := range checks {
		inCatalog[c.CheckID] = c.Status
	}
	var lagging []string
	for _, r := range want {
		behind := node == nil || node.Services[r.ID] == nil
		for _, c := range local {
			if c.ServiceID == r.ID && inCatalog[c.CheckID] != c.Status {
				behind = true
			}
		}
		if behind {
			lagging = append(lagging, r.ID)
		}
	}
	return lagging
}

// noteLag keeps what the catalog lags behind on for /ready, and says in
// the log when it has for lagWarnAfter. The caller holds g.mu.
func (g *registrar) noteLag(lagging []string) {
	switch {
	case len(lagging) == 0 && g.lagWarned:
		g.logger.Info("consul's catalog is level with its agent again", "after", time.Since(g.lagSince).Round(time.Second).String())
	case len(lagging) > 0 && len(g.lagging) == 0:
		g.lagSince = time.Now()
	case len(lagging) > 0 && !g.lagWarned && time.Since(g.lagSince) >= lagWarnAfter:
		g.logger.Warn("consul's catalog lags behind its agent on registrations or their checks; the agent copies them with its next sync of its whole state",
			"registrations", lagging, "for", time.Since(g.lagSince).Round(time.Second).String())
		g.lagWarned = true
	}
	if len(lagging) == 0 {
		g.lagWarned = false
	}
	g.lagging = lagging
}

// noteRead keeps since when the catalog could not be read, and says in the
// log once it has not been for lagWarnAfter, while /ready keeps the
// verdict of its last read, and again when it is read. The caller holds
// g.mu.
func (g *registrar) noteRead(err error, now time.Time) {
	switch {
	case err == nil:
		if g.unreadWarned {
			g.logger.Info("consul's catalog can be read again", "after", now.Sub(g.unreadSince).Round(time.Second).String())
		}
		g.unreadSince, g.unreadWarned = time.Time{}, false
	case g.unreadSince.IsZero():
		g.unreadSince = now
		g.logger.Debug("consul's catalog unread", "error", err)
	case !g.unreadWarned && now.Sub(g.unreadSince) >= lagWarnAfter:
		g.logger.Warn("consul's catalog cannot be read (a cluster without a leader?); /ready keeps the verdict of its last read",
			"error", err, "for", now.Sub(g.unreadSince).Round(time.Second).String())
		g.unreadWarned = true
	default:
		g.logger.Debug("consul's catalog unread", "error", err)
	}
}

func sameRegistration(cur *consul.AgentService, r *consul.AgentServiceRegistration) bool {
	return cur.Service == r.Name && cur.Address == r.Address && cur.Port == r.Port &&
		slices.Equal(cur.Tags, r.Tags) && maps.Equal(cur.Meta, r.Meta)
}

// wanted is the stack plus the stored outside services.
func (g *registrar) wanted() ([]*consul.AgentServiceRegistration, error) {
	ext, err := g.external()
	if err != nil {
		return nil, err
	}
	want := slices.Clone(g.desired)
	for _, r := range ext {
		want = append(want, externalRegistration(r))
	}
	return want, nil
}

func externalRegistration(r meshapi.Registration) *consul.AgentServiceRegistration {
	meta := maps.Clone(r.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	meta["managed_by"] = managedBy
	meta["external"] = "true"
	reg := &consul.AgentServiceRegistration{ID: r.ID, Name: r.Name, Address: r.Address, Port: r.Port, Tags: r.Tags, Meta: meta}
	if r.Check != "" {
		reg.Check = &consul.AgentServiceCheck{CheckID: r.ID + "-check", Name: r.Name + " check", HTTP: r.Check, Interval: r.Interval, Timeout: "2s"}
	}
	return reg
}

func (g *registrar) external() ([]meshapi.Registration, error) {
	var out []meshapi.Registration
	err := g.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(externalBucket).ForEach(func(_, v []byte) error {
			var r meshapi.Registration
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// register stores an outside service and registers it now.
func (g *registrar) register(ctx context.Context, r meshapi.Registration) error {
	if g.consul == nil {
		return errNoConsul
	}
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	var previous []byte // the registration r replaces, if any
	if err := g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(externalBucket)
		if old := b.Get([]byte(r.ID)); old != nil {
			previous = slices.Clone(old) // bolt's bytes live only as long as tx
		}
		return b.Put([]byte(r.ID), data)
	}); err != nil {
		return err
	}
	if err := g.consul.Agent().ServiceRegisterOpts(externalRegistration(r), consul.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		var refused consul.StatusError
		if errors.As(err, &refused) && refused.Code == http.StatusBadRequest {
			// Consul will never take it: keeping it would fail every sync.
			// What it replaced, which Consul still holds, stays.
			if derr := g.db.Update(func(tx *bolt.Tx) error {
				if previous != nil {
					return tx.Bucket(externalBucket).Put([]byte(r.ID), previous)
				}
				return tx.Bucket(externalBucket).Delete([]byte(r.ID))
			}); derr != nil {
				return derr
			}
			return &refusedError{strings.TrimSpace(refused.Body)}
		}
		// Anything else (unreachable, 403, 429, 5xx) may pass later.
		return &pendingError{err}
	}
	return nil
}

// refusedError is Consul turning a registration down; nothing is kept.
type refusedError struct{ reason string }

func (e *refusedError) Error() string { return "consul refused the registration: " + e.reason }

// pendingError says a change is saved but Consul has not taken it yet; the
// sync loop applies it once Consul answers.
type pendingError struct{ err error }

func (e *pendingError) Error() string { return "saved; consul has not taken it yet: " + e.err.Error() }
func (e *pendingError) Unwrap() error { return e.err }

// deregister forgets every outside instance of name and removes it from
// Consul; it reports how many there were.
func (g *registrar) deregister(ctx context.Context, name string) (int, error) {
	if g.consul == nil {
		return 0, errNoConsul
	}
	var ids []string
	err := g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(externalBucket)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var r meshapi.Registration
			if json.Unmarshal(v, &r) == nil && r.Name == name {
				ids = append(ids, string(k))
			}
		}
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		if err := g.consul.Agent().ServiceDeregisterOpts(id, (&consul.QueryOptions{}).WithContext(ctx)); err != nil {
			return len(ids), &pendingError{err}
		}
	}
	return len(ids), nil
}

// deregisterStack removes the stack's registrations on shutdown; outside
// services keep theirs, as they keep running.
func (g *registrar) deregisterStack() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, r := range g.desired {
		if err := g.consul.Agent().ServiceDeregisterOpts(r.ID, (&consul.QueryOptions{}).WithContext(ctx)); err != nil {
			g.logger.Warn("deregister on shutdown failed", "id", r.ID, "error", err)
			return
		}
	}
	g.logger.Info("deregistered the stack from consul", "registrations", len(g.desired))
}

// check is the controller's /ready line for Consul.
func (g *registrar) check(context.Context) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lastErr != nil {
		return "", fmt.Errorf("consul sync: %w", g.lastErr)
	}
	if g.lastSync.IsZero() {
		return "", errors.New("consul: not synced yet")
	}
	if len(g.lagging) > 0 {
		return "", fmt.Errorf("consul's catalog lags behind its agent on %d of the %d registrations (or their checks); the agent copies them with its next sync of its whole state",
			len(g.lagging), g.synced)
	}
	return fmt.Sprintf("%d registrations in sync", g.synced), nil
}

// instances lists the instances of name (every service when name is ""),
// healthy or not, with their aggregated check status (never a check's
// output).
func (g *registrar) instances(ctx context.Context, name string) ([]meshapi.Instance, error) {
	if g.consul == nil {
		return nil, errNoConsul
	}
	q := (&consul.QueryOptions{}).WithContext(ctx)
	names := []string{name}
	if name == "" {
		services, _, err := g.consul.Catalog().Services(q)
		if err != nil {
			return nil, err
		}
		names = names[:0]
		for n := range services {
			if n != "consul" {
				names = append(names, n)
			}
		}
		sort.Strings(names)
	}
	out := []meshapi.Instance{}
	for _, n := range names {
		entries, _, err := g.consul.Health().Service(n, "", false, q)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			// The status only: a check's output is what Consul fetched,
			// and passing it on would make the controller its relay.
			out = append(out, meshapi.Instance{ID: e.Service.ID, Service: e.Service.Service, Address: addr, Port: e.Service.Port,
				Tags: e.Service.Tags, Meta: e.Service.Meta, Status: e.Checks.AggregatedStatus()})
		}
	}
	return out, nil
}
