package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"

	"github.com/pickme/lucid/pkg/catalog"
)

// ServiceOptions say which services of the current release Restart, Stop
// and Start change.
type ServiceOptions struct {
	// Services are catalog names; none means every service, in start
	// order (stop: the reverse).
	Services []string
	// Force stops a service even when running services depend on it.
	Force bool
}

// ServiceResult is what Restart, Stop or Start did on a host.
type ServiceResult struct {
	Target   string      `json:"target"`
	Action   AuditAction `json:"action"`
	Release  string      `json:"release"`
	Services []string    `json:"services"`
	// Dependants are running services, not among Services, that depend on
	// one of them (DependsOn or After).
	Dependants []string `json:"dependants,omitempty"`
	// AuditError says the action, which succeeded, is missing from the
	// host's audit log.
	AuditError string `json:"audit_error,omitempty"`
}

// DependantsError refuses to stop services that running services depend
// on, unless forced.
type DependantsError struct {
	Services, Dependants []string
}

// Error names both.
func (e *DependantsError) Error() string {
	return fmt.Sprintf("%s would stop under %s, which depend on it and keep running", strings.Join(e.Services, ", "), strings.Join(e.Dependants, ", "))
}

// ErrUnknownService is a service name the catalog (or, for Logs, the
// host) does not have.
var ErrUnknownService = errors.New("no such service")

// Restart restarts services of the current release under the deploy lock
// and waits, as a deploy's health gate does, until they are running and
// healthy again (and the gateway answers, when it is one of them).
func (d *Deployer) Restart(ctx context.Context, o ServiceOptions) (*ServiceResult, error) {
	return d.services(ctx, AuditRestart, o)
}

// Stop stops services of the current release under the deploy lock. A
// service that running services depend on is refused with a
// *DependantsError unless o.Force.
func (d *Deployer) Stop(ctx context.Context, o ServiceOptions) (*ServiceResult, error) {
	return d.services(ctx, AuditStop, o)
}

// Start starts stopped services of the current release under the deploy
// lock and waits until they are running and healthy.
func (d *Deployer) Start(ctx context.Context, o ServiceOptions) (*ServiceResult, error) {
	return d.services(ctx, AuditStart, o)
}

// SelectServices returns the catalog services names (all when none) in
// start order; an unknown name is an ErrUnknownService.
func SelectServices(names []string) ([]catalog.Service, error) {
	if len(names) == 0 {
		return slices.Clone(catalog.Services), nil
	}
	var out []catalog.Service
	for _, s := range catalog.Services {
		if slices.Contains(names, s.Name) {
			out = append(out, s)
		}
	}
	for _, n := range names {
		if _, ok := catalog.Lookup(n); !ok {
			return nil, fmt.Errorf("%w %q (one of: %s)", ErrUnknownService, n, strings.Join(catalog.Names(), ", "))
		}
	}
	return out, nil
}

// Dependants are the services outside sel that depend on one in sel
// (DependsOn or After), in start order.
func Dependants(sel []catalog.Service) []string {
	var out []string
	for _, s := range catalog.Services {
		if slices.ContainsFunc(sel, func(x catalog.Service) bool { return x.Name == s.Name }) {
			continue
		}
		for _, x := range sel {
			if slices.Contains(s.DependsOn, x.Name) || slices.Contains(s.After, x.Name) {
				out = append(out, s.Name)
				break
			}
		}
	}
	return out
}

func stepOf(a AuditAction) Step {
	switch a {
	case AuditStop:
		return StepStop
	case AuditStart:
		return StepStart
	}
	return StepRestart
}

func (d *Deployer) services(ctx context.Context, action AuditAction, o ServiceOptions) (res *ServiceResult, opErr error) {
	name, step := d.cfg.Name, stepOf(action)
	sel, err := SelectServices(o.Services)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, s := range sel {
		names = append(names, s.Name)
	}
	held, release, err := d.holdLock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	ctx = held
	defer func() { opErr = lockLost(held, opErr) }()

	entry := AuditEntry{Action: action, Services: names}
	if o.Force {
		entry.Args = []string{"--force"}
	}
	defer func() { opErr = d.auditOutcome(ctx, entry, opErr, func(msg string) { res.AuditError = msg }) }()

	cur, err := d.h.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: releases: %w", name, err)
	}
	if cur == nil {
		return nil, fmt.Errorf("%s: %w: nothing is deployed (no current release)", name, ErrNoRelease)
	}
	entry.Release = cur.ID
	byService, err := d.h.serviceContainers(ctx)
	if err != nil {
		return nil, err
	}
	out := &ServiceResult{Target: name, Action: action, Release: cur.ID, Services: names}
	if action != AuditStart {
		for _, dep := range Dependants(sel) {
			s, _ := catalog.Lookup(dep)
			if c, ok := byService[s.Container]; ok && c.State == "running" {
				out.Dependants = append(out.Dependants, dep)
			}
		}
	}
	if len(out.Dependants) > 0 {
		msg := fmt.Sprintf("%s depend on %s", strings.Join(out.Dependants, ", "), strings.Join(names, ", "))
		if action == AuditStop && !o.Force {
			d.emit(step, EventFail, msg+"; stop them too, or --force")
			return nil, &DependantsError{Services: names, Dependants: out.Dependants}
		}
		d.emit(step, EventWarn, msg+"; they keep running and reconnect")
	}

	if action != AuditStart && d.cfg.BeforeUp != nil && slices.ContainsFunc(sel, func(s catalog.Service) bool { return s.Name == catalog.EngineService }) {
		if err := d.cfg.BeforeUp(ctx); err != nil {
			return nil, err // the check reported why
		}
	}
	order := sel
	if action == AuditStop {
		order = slices.Clone(sel)
		slices.Reverse(order)
	}
	only := map[string]bool{}
	for _, s := range order {
		c, ok := byService[s.Container]
		if !ok {
			err := fmt.Errorf("%s: %s has no container %s; a deploy or a rollback creates it", name, s.Name, s.Container)
			d.emit(step, EventFail, err.Error())
			return nil, err
		}
		only[s.Container] = true
		d.emit(step, EventStart, s.Name)
		switch action {
		case AuditStop:
			err = d.h.docker.ContainerStop(ctx, c.ID, container.StopOptions{})
		case AuditStart:
			err = d.h.docker.ContainerStart(ctx, c.ID, container.StartOptions{})
		default:
			err = d.h.docker.ContainerRestart(ctx, c.ID, container.StopOptions{})
		}
		if err != nil {
			err = fmt.Errorf("%s: %s %s: %w", name, action, s.Name, err)
			d.emit(step, EventFail, err.Error())
			return nil, err
		}
		d.emit(step, EventOK, s.Name)
	}
	if action == AuditStop {
		return out, nil
	}
	d.emit(StepHealth, EventStart, fmt.Sprintf("%s healthy within %s", strings.Join(names, ", "), d.cfg.HealthTimeout))
	err = d.h.waitHealthy(ctx, cur.ID, len(only), d.cfg.HealthTimeout, only)
	if gw, _ := catalog.Lookup("gateway"); err == nil && only[gw.Container] {
		_, err = d.h.gatewayHealth(ctx, cur.ID, d.gatewayAddr(ctx), nil)
	}
	if err != nil {
		d.emit(StepHealth, EventFail, err.Error())
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	d.emit(StepHealth, EventOK, "")
	return out, nil
}

// serviceContainers are the project's service containers (not one-off
// ones) by container name.
func (h *host) serviceContainers(ctx context.Context) (map[string]container.Summary, error) {
	list, err := h.projectContainers(ctx)
	if err != nil {
		return nil, err
	}
	byService := map[string]container.Summary{}
	for _, c := range list {
		if c.Labels["com.docker.compose.oneoff"] != "True" {
			byService[c.Labels[composeServiceLabel]] = c
		}
	}
	return byService, nil
}
