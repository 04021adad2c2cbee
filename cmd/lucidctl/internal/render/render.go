// Package render implements `lucidctl render`: it writes the compose file
// of the core services, the operator's env file and each service's own env
// file from the embedded templates, keeping existing values and generating
// missing secrets.
package render

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/routetable"
)

// Options are the inputs of `lucidctl render`.
type Options struct {
	Env    *cli.Env
	DryRun bool
	Set    []string
	// Dir is where configs/ goes (default: lucid.yaml's directory).
	Dir        string
	NoConsul   bool
	PortOffset int
}

// NewCmd returns the render command.
func NewCmd(env *cli.Env) *cobra.Command {
	opts := &Options{Env: env}
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Write the compose and env files of the core services",
		Long: `Write configs/docker/docker-compose.core.yml (the seven services: Consul and
the six Lucid services, hardened, with health-gated dependencies),
configs/environment/.env.core (the operator's file: every secret, the
service URLs, the settings) and configs/environment/<service>.env, one per
container, from the embedded templates and lucid.yaml's image names.

.env.core stays on this machine. Each service's env file holds only what
that service reads, with its mesh credentials derived for its own name and
the hash of its own operator credential rather than the operator token
(for this machine, "local"; lucidctl deploy binds it to each target): a
deploy ships these, so one compromised container holds no other's secrets. A key of .env.core
that no service reads is named (a typo, most likely).

Values the env file already has are kept; --set overrides one. Missing
secrets are generated from crypto/rand in an alphabet that needs no quoting.
Env files are written atomically with mode 0600. Secret values never
appear in any output: --dry-run shows a diff with them redacted.

When configs/gateway/routes.yaml exists it is the gateway's route table
(start one with ` + "`lucidctl render routes`" + `): it is checked, the compose file mounts it read-only into the gateway, and
lucidctl deploy ships it. Without it the gateway runs DESIGN.md's table.

With lucid.yaml's tls section the gateway serves HTTPS: its env file gets
the ACME settings, or the certificate and key files, which are copied into
configs/gateway/tls/ (mode 0600) and mounted read-only into the gateway
only; tls.https_port and tls.http_port are published for it. Without one,
a gateway publishing plain HTTP beyond the host's loopback is warned about
on stderr.

With a cluster in lucid.yaml (docs/cluster.md) the files are a cluster
host's, which a deploy completes for each host: Consul runs as a server
with gossip encrypted by CONSUL_GOSSIP_KEY (generated when missing, Consul's
alone); the engine's API and Raft ports and Consul's server and gossip
ports are published on every address for the other hosts; and every mesh
controller adopts one CA, kept in configs/mesh/ca/ (made when missing, mode
0700, its files 0600 and never shown), which is mounted read-only into the
mesh controller alone. Back that directory up: it holds the CA's keys.
Without REDIS_URL the cluster's gateways each keep their own rate budget,
which render warns about.`,
		Example: `  lucidctl render
  lucidctl render --dry-run
  lucidctl render --set REDIS_URL=redis://lucid-redis:6379/0
  lucidctl render --set JWT_SECRET_KEY=- < new-key   # a secret off the command line
  lucidctl render routes          # start configs/gateway/routes.yaml`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), opts)
		},
	}
	cmd.AddCommand(newRoutesCmd(env))
	f := cmd.Flags()
	f.BoolVar(&opts.DryRun, "dry-run", false, "print what would change, as a diff with secrets redacted, and write nothing")
	f.StringArrayVar(&opts.Set, "set", nil, "set an env value, `KEY=VALUE` (repeatable; beats the existing file); KEY=- reads the value from standard input")
	f.BoolVar(&opts.NoConsul, "no-consul", false, "leave the Consul container out (Consul runs elsewhere, or the gateway uses static URLs)")
	f.IntVar(&opts.PortOffset, "port-offset", 0, "add N to every published host port, to run a second stack on one host")
	f.StringVar(&opts.Dir, "dir", "", "directory to write configs/ under (default: the directory of lucid.yaml)")
	return cli.SupportsJSON(cmd)
}

// File is one written (or, with --dry-run, would-be-written) file.
type File struct {
	Path string `json:"path"`
	// Status is created, updated or unchanged.
	Status string `json:"status"`
	// Diff is the change, secrets redacted (with --dry-run only).
	Diff string `json:"diff,omitempty"`
}

// Output is the --json result.
type Output struct {
	DryRun bool   `json:"dry_run"`
	Files  []File `json:"files"`
	// Generated names the secrets made up (their values are never shown).
	Generated []string `json:"generated"`
	// Routes is the gateway's route table the compose file mounts, if the
	// project has one (deployfiles.RoutesPath).
	Routes string `json:"routes,omitempty"`
	// Unread names keys of the operator's env file that no service reads.
	Unread []string `json:"unread,omitempty"`
	// Warnings are what the operator should know: the gateway serving
	// plain HTTP beyond the host's loopback, a cluster without REDIS_URL.
	Warnings []string `json:"warnings,omitempty"`
	// NewMeshCA names the directory of a cluster's mesh CA when render
	// made a new one (deployfiles.MeshCASeedDir).
	NewMeshCA string `json:"new_mesh_ca,omitempty"`
	// Tightened names the secret files and directories others could read,
	// which render made the owner's alone (0600, 0700); a dry run names
	// them without changing them.
	Tightened []string `json:"tightened,omitempty"`
}

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func run(ctx context.Context, opts *Options) error {
	if opts.PortOffset < 0 || opts.PortOffset > deployfiles.MaxPortOffset {
		return cli.Usage(fmt.Errorf("--port-offset %d is outside 0..%d", opts.PortOffset, deployfiles.MaxPortOffset))
	}
	cfg, err := opts.Env.Config()
	if err != nil {
		return err
	}
	dir := opts.Dir
	if dir == "" {
		dir = cfg.Dir
	}
	set := map[string]string{}
	var fromStdin []string // KEY=-: one at most
	for _, kv := range opts.Set {
		if k, v, _ := strings.Cut(kv, "="); v == "-" {
			fromStdin = append(fromStdin, k)
		}
	}
	if len(fromStdin) > 1 {
		return cli.Usage(fmt.Errorf("--set %s=-: one value at most comes from standard input", strings.Join(fromStdin, "=-, ")))
	}
	for i, kv := range opts.Set {
		// The argument is never echoed: it may be a secret.
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !envKey.MatchString(k) {
			return cli.Usage(fmt.Errorf("--set number %d: want KEY=VALUE with a variable name as KEY", i+1))
		}
		if v == "-" {
			// A secret typed or piped in, never on a command line that
			// ps and the shell's history keep.
			line, err := bufio.NewReader(opts.Env.IO.In).ReadString('\n')
			if err != nil && (!errors.Is(err, io.EOF) || line == "") {
				return cli.Usage(fmt.Errorf("--set %s=-: no value on standard input", k))
			}
			v = strings.TrimRight(line, "\r\n")
		}
		if _, err := envfile.Value(k, v); err != nil {
			return cli.Usage(fmt.Errorf("--set %w", err))
		}
		set[k] = v
	}

	envPath := filepath.Join(dir, filepath.FromSlash(deployfiles.EnvPath))
	oldEnv, err := readIfExists(envPath)
	if err != nil {
		return err
	}
	var existing map[string]string
	if oldEnv != nil {
		if existing, err = envfile.Read(envPath); err != nil {
			return err // names the file and line, never a value
		}
	}
	routes, err := deployfiles.ReadRoutes(dir)
	if err != nil {
		return err
	}
	if routes != nil {
		if _, err := routetable.Parse(deployfiles.RoutesPath, routes); err != nil {
			return cli.Problems(err) // every problem, with its line; nothing written
		}
	}

	tlsOpts, err := TLSOptions(cfg)
	if err != nil {
		return err
	}
	cluster, err := ClusterOptions(cfg, dir)
	if err != nil {
		return err
	}
	files, err := deployfiles.Render(ctx, deployfiles.Options{
		ImageName: cfg.Images.Name, ImageTag: cfg.Images.Tag, Existing: existing, Set: set,
		NoConsul: opts.NoConsul, PortOffset: opts.PortOffset, Routes: routes, TLS: tlsOpts, Cluster: cluster,
	})
	if err != nil {
		return err
	}

	out := Output{DryRun: opts.DryRun, Generated: files.Generated, Unread: files.Unread, Warnings: files.Warnings}
	if routes != nil {
		out.Routes = deployfiles.RoutesPath
	}
	if out.Generated == nil {
		out.Generated = []string{}
	}
	if files.NewMeshCA {
		out.NewMeshCA = deployfiles.MeshCASeedDir
	}
	for _, f := range files.All() {
		path := filepath.Join(dir, filepath.FromSlash(f.Path))
		old, err := readIfExists(path)
		if err != nil {
			return err
		}
		rec := File{Path: f.Path, Status: status(old, f.Content)}
		switch {
		case opts.DryRun && f.Opaque:
			// Key material: whether it changes, never what it is.
			if rec.Status != "unchanged" {
				rec.Diff = fmt.Sprintf("%s: %s (content not shown)\n", f.Path, rec.Status)
			}
		case opts.DryRun:
			newer := f.Content
			if f.Secret {
				var was map[string]string
				if old != nil {
					was, _ = envfile.Parse(old)
				}
				old, newer = redactOrNil(old), deployfiles.RedactEnvChanges(newer, was)
			}
			rec.Diff = deployfiles.Diff(f.Path, old, newer)
		case rec.Status != "unchanged":
			if strings.HasPrefix(f.Path, deployfiles.MeshCASeedDir+"/") {
				// The CA's keys: the directory is the operator's alone.
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					return err
				}
			}
			if err := envfile.WriteAtomic(path, f.Content); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
		}
		out.Files = append(out.Files, rec)
	}
	// A secret file render did not rewrite keeps the mode it came with.
	tighten := deployfiles.TightenSecrets
	if opts.DryRun {
		tighten = deployfiles.LooseSecrets
	}
	loose, err := tighten(ctx, dir)
	if err != nil {
		return err
	}
	for _, l := range loose {
		out.Tightened = append(out.Tightened, l.Path)
	}
	return report(opts, out)
}

func report(opts *Options, out Output) error {
	if opts.Env.JSON {
		return opts.Env.PrintJSON(out)
	}
	w := opts.Env.IO.Out
	for _, f := range out.Files {
		if opts.DryRun {
			if f.Diff == "" {
				fmt.Fprintf(opts.Env.IO.ErrOut, "%s: no change\n", f.Path)
			}
			fmt.Fprint(w, f.Diff)
			continue
		}
		fmt.Fprintf(w, "%-9s %s\n", f.Status, f.Path)
	}
	verb := "generated"
	if opts.DryRun {
		verb = "would generate"
	}
	for _, k := range out.Generated {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%s %s (the value is in the env file only)\n", verb, k)
	}
	if out.NewMeshCA != "" {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%s a new mesh CA for the cluster in %s (its keys are there only: back it up)\n", verb, out.NewMeshCA)
	}
	if out.Routes != "" {
		fmt.Fprintf(opts.Env.IO.ErrOut, "the gateway's route table is %s (mounted read-only)\n", out.Routes)
	}
	for _, k := range out.Unread {
		fmt.Fprintf(opts.Env.IO.ErrOut, "warning: %s in %s is read by no service (a typo?); it stays there and goes nowhere\n", k, deployfiles.EnvPath)
	}
	for _, w := range out.Warnings {
		fmt.Fprintf(opts.Env.IO.ErrOut, "warning: %s\n", w)
	}
	done := "made it the owner's alone"
	if opts.DryRun {
		done = "render would make it the owner's alone"
	}
	for _, p := range out.Tightened {
		fmt.Fprintf(opts.Env.IO.ErrOut, "%s: others could read its secrets; %s\n", p, done)
	}
	return nil
}

// TLSOptions reads the files lucid.yaml's tls section names, for Render;
// nil without the section.
func TLSOptions(cfg *projectconfig.Config) (*deployfiles.TLS, error) {
	t := cfg.TLS
	if t == nil {
		return nil, nil
	}
	out := &deployfiles.TLS{HTTPSPort: t.HTTPSPort, HTTPPort: t.HTTPPort}
	read := func(key, p string) ([]byte, error) {
		b, err := os.ReadFile(cfg.Abs(p))
		if err != nil {
			return nil, fmt.Errorf("tls.%s: %w", key, err)
		}
		return b, nil
	}
	var err error
	if a := t.ACME; a != nil {
		out.ACME = &deployfiles.ACME{Domains: a.Domains, Email: a.Email, Directory: a.Directory}
		if a.CARoot != "" {
			if out.ACME.CARoot, err = read("acme.ca_root", a.CARoot); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	if out.Cert, err = read("cert_file", t.CertFile); err != nil {
		return nil, err
	}
	if out.Key, err = read("key_file", t.KeyFile); err != nil {
		return nil, err
	}
	return out, nil
}

// ClusterOptions is what Render needs of lucid.yaml's cluster, with the
// mesh CA seed the project in dir holds; nil without a cluster.
func ClusterOptions(cfg *projectconfig.Config, dir string) (*deployfiles.Cluster, error) {
	for _, cl := range cfg.Clusters { // at most one (projectconfig)
		seed, err := deployfiles.ReadMeshCASeed(dir)
		if err != nil {
			return nil, err
		}
		return &deployfiles.Cluster{Hosts: len(cl.Hosts), MeshCASeed: seed}, nil
	}
	return nil, nil
}

func status(old, cur []byte) string {
	switch {
	case old == nil:
		return "created"
	case string(old) == string(cur):
		return "unchanged"
	default:
		return "updated"
	}
}

func redactOrNil(b []byte) []byte {
	if b == nil {
		return nil
	}
	return deployfiles.RedactEnv(b)
}

func readIfExists(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
