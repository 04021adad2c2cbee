package supervise

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pickme/lucid/pkg/api"
)

// Spec describes one supervised program.
type Spec struct {
	// Name identifies the program in logs, status and dependencies.
	Name string
	// Path and Args are the command line (Args without the program name).
	Path string
	Args []string
	// Env is the complete environment of the program; nil inherits ours.
	Env []string
	// Dir is the working directory; empty means ours.
	Dir string
	// DependsOn names programs that must be ready before this one starts.
	DependsOn []string
	// After names programs this one starts after, without needing them:
	// it waits until each is ready or will not run (failed, given up, or
	// waiting on a dependency that did), so one that cannot start does not
	// keep it from starting.
	After []string
	// Ready reports whether the started program is ready for dependants.
	// Nil means ready as soon as it has started.
	Ready Probe
	// ReadyWithout, when set, stands in for Ready while a program in After
	// will not run: a front for several programs is as ready as it can be
	// without one of them, where Ready would wait for that one for ever.
	ReadyWithout Probe
	// StopTimeout is how long the program gets between SIGTERM and SIGKILL.
	StopTimeout time.Duration
	// Restart sets the restart policy; zero fields take the defaults.
	Restart RestartPolicy
}

// RestartPolicy says how a program that dies is restarted.
type RestartPolicy struct {
	// InitialBackoff is the delay before the first restart.
	InitialBackoff time.Duration
	// MaxBackoff caps the delay, which doubles with each quick death.
	MaxBackoff time.Duration
	// StableAfter is how long a run must last for the delay to reset.
	StableAfter time.Duration
	// MaxDeaths deaths within Window mark the program failed: it is not
	// restarted again until the supervisor is.
	MaxDeaths int
	Window    time.Duration
}

// DefaultRestart is the policy used for zero fields.
var DefaultRestart = RestartPolicy{
	InitialBackoff: 500 * time.Millisecond,
	MaxBackoff:     30 * time.Second,
	StableAfter:    30 * time.Second,
	MaxDeaths:      5,
	Window:         2 * time.Minute,
}

// DefaultStopTimeout is used when a Spec sets none.
const DefaultStopTimeout = 10 * time.Second

func (p RestartPolicy) withDefaults() RestartPolicy {
	d := DefaultRestart
	if p.InitialBackoff > 0 {
		d.InitialBackoff = p.InitialBackoff
	}
	if p.MaxBackoff > 0 {
		d.MaxBackoff = p.MaxBackoff
	}
	if p.StableAfter > 0 {
		d.StableAfter = p.StableAfter
	}
	if p.MaxDeaths > 0 {
		d.MaxDeaths = p.MaxDeaths
	}
	if p.Window > 0 {
		d.Window = p.Window
	}
	return d
}

// next returns the delay before the next restart, given the previous delay
// and how long the run that just ended lasted.
func (p RestartPolicy) next(prev, ran time.Duration) time.Duration {
	if prev == 0 || ran >= p.StableAfter {
		return p.InitialBackoff
	}
	return min(prev*2, p.MaxBackoff)
}

// Probe reports whether a started program is ready.
type Probe func(ctx context.Context) error

// HTTPProbe is ready when GET url answers with success within a second.
// An https URL is read without checking the server's certificate: a
// readiness endpoint carries nothing secret, and the supervisor holds no
// mesh certificate.
func HTTPProbe(url string) Probe { return HTTPProbeWithin(url, time.Second) }

// HTTPProbeWithin is HTTPProbe answering within d.
func HTTPProbeWithin(url string, d time.Duration) Probe {
	client := &http.Client{Timeout: d}
	if strings.HasPrefix(url, "https://") {
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}
	}
	return func(ctx context.Context) error {
		return api.Do(ctx, client, api.Request{Method: http.MethodGet, URL: url}, nil)
	}
}

// validate checks names, dependencies and cycles, and returns the specs in
// a start order (dependencies first, otherwise as given).
func validate(specs []Spec) ([]Spec, error) {
	byName := map[string]Spec{}
	for _, s := range specs {
		if s.Name == "" {
			return nil, errors.New("a program has no name")
		}
		if s.Path == "" {
			return nil, fmt.Errorf("%s: no command", s.Name)
		}
		if _, dup := byName[s.Name]; dup {
			return nil, fmt.Errorf("%s: defined twice", s.Name)
		}
		byName[s.Name] = s
	}
	const (
		unvisited = iota
		visiting
		done
	)
	mark := map[string]int{}
	var order []Spec
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch mark[name] {
		case visiting:
			return fmt.Errorf("dependency cycle: %v", append(path, name))
		case done:
			return nil
		}
		mark[name] = visiting
		s := byName[name]
		for _, d := range slices.Concat(s.DependsOn, s.After) {
			if _, ok := byName[d]; !ok {
				return fmt.Errorf("%s depends on %q, which is not defined", name, d)
			}
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		mark[name] = done
		order = append(order, s)
		return nil
	}
	for _, s := range specs {
		if err := visit(s.Name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
