package maintenance

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/hostservices"
)

// Services reach one stack's services with the operator credential, as the
// maintenance commands do: for other commands (restore) that check a
// stack after changing it.
type Services struct{ s *session }

// OpenServices reaches the services of host (through its SSH connection),
// or, when host is nil, of the local stack on this machine's loopback.
// offset is the stack's port offset; envFile holds the operator's tokens
// ("" for local.env_file of lucid.yaml).
func OpenServices(env *cli.Env, host *fleet.Host, offset int, envFile string) (*Services, error) {
	creds, err := hostservices.ReadCredentials(env, envFile)
	if err != nil {
		return nil, err
	}
	s := &session{Offset: offset, Creds: creds, Say: func(string, ...any) {}}
	if host != nil {
		s.Host, s.Dial, s.Deployed = host.Name, host.SSH.DialTCP, hostservices.DeployedOf(host.DeployConfig())
	} else {
		cfg, err := env.Config()
		if err != nil {
			return nil, err
		}
		s.Host = cfg.Local.Name
		var d net.Dialer
		s.Dial = func(addr string) (net.Conn, error) { return d.Dial("tcp", addr) }
	}
	return &Services{s: s}, nil
}

// Client is an HTTP client for service, and its base URL. timeout 0
// leaves each request to its context.
func (v *Services) Client(ctx context.Context, service string, timeout time.Duration) (*http.Client, string, error) {
	hc, base, err := v.s.Client(ctx, service, timeout)
	return hc, base, v.s.Classify(ctx, err)
}

// Close drops the idle connections.
func (v *Services) Close() { v.s.Close() }
