package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/pkg/buildinfo"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/envconfig"
	"github.com/pickme/lucid/pkg/routetable"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/services/anchoring"
	"github.com/pickme/lucid/services/blocks"
	"github.com/pickme/lucid/services/datachain"
	"github.com/pickme/lucid/services/engine"
	"github.com/pickme/lucid/services/gateway"
	"github.com/pickme/lucid/services/mesh"
)

// apps maps each catalog service to its implementation. A test keeps it in
// step with catalog.Services.
var apps = map[string]func() service.App{
	"gateway":   gateway.New,
	"mesh":      mesh.New,
	"engine":    engine.New,
	"anchoring": anchoring.New,
	"blocks":    blocks.New,
	"datachain": datachain.New,
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "lucid <service>",
		Short: "Lucid's core services in one binary",
		Long: `lucid runs one of Lucid's core services. Each reads its configuration from
the environment (LUCID_ADDR, LUCID_DATA_DIR, LUCID_LOG_LEVEL, ... and the
Phase 2 names such as JWT_SECRET_KEY), logs JSON lines to stderr, serves
/health, /ready and /metrics, and stops gracefully on SIGTERM.`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		Version:           buildinfo.Read().String(),
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddGroup(&cobra.Group{ID: "services", Title: "Services:"})
	for _, svc := range catalog.Services {
		root.AddCommand(newServiceCmd(svc, stdout, stderr))
	}
	root.AddCommand(newVersionCmd(stdout))
	root.AddCommand(newDataCmd(stdout, stderr))
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	root.Args = func(_ *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown service %q (services: %v)", args[0], catalog.Names())}
		}
		return nil
	}
	return root
}

func newServiceCmd(svc catalog.Service, stdout, stderr io.Writer) *cobra.Command {
	newApp := apps[svc.Name]
	cmd := &cobra.Command{
		Use:     svc.Name,
		Short:   fmt.Sprintf("%s (port %d)", svc.Summary, svc.Port),
		GroupID: "services",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return service.Main(cmd.Context(), svc.Name, newApp(), envconfig.OS, stderr)
		},
	}
	var ready bool
	hc := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if the running " + svc.Name + " answers /health (or /ready with --ready), else 1",
		Long: `healthcheck asks the service on LUCID_ADDR (default :` + fmt.Sprint(svc.Port) + `) whether it is
alive. Container images have no curl; their HEALTHCHECK runs this instead.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := envconfig.New(envconfig.OS)
			addr, tls := service.ProbeTarget(r, svc.Name)
			if err := r.Err(); err != nil {
				return &service.ConfigError{Service: svc.Name, Err: err}
			}
			path := "/health"
			if ready {
				path = "/ready"
			}
			return service.Probe(cmd.Context(), addr, path, tls)
		},
	}
	hc.Flags().BoolVar(&ready, "ready", false, "check /ready (dependencies reachable) instead of /health")
	cmd.AddCommand(hc)
	if svc.Name == "gateway" {
		cmd.AddCommand(newRoutesCmd(stdout))
	}
	return cmd
}

// newRoutesCmd prints the gateway's route table: an operator's starting
// point for LUCID_GATEWAY_ROUTES, and a check of an edited one.
func newRoutesCmd(stdout io.Writer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "Check and print the gateway's route table (" + routetable.EnvVar + ", else the default) as YAML",
		Long: `routes reads the route table the gateway would start with: the YAML file
named by ` + routetable.EnvVar + `, or the default table when it is unset. It
prints the table with every default filled in, or reports each problem with
its line and exits 2. -o writes it to a file instead, creating its folder.

  lucid gateway routes -o configs/gateway/routes.yaml   # start from the defaults
  ` + routetable.EnvVar + `=routes.yaml lucid gateway routes   # check an edit`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			routes, err := routetable.Load(os.Getenv(routetable.EnvVar))
			if err != nil {
				return &service.ConfigError{Service: "gateway", Err: err}
			}
			out, err := routetable.Marshal(routes)
			if err != nil {
				return err
			}
			if output == "" {
				_, err = stdout.Write(out)
				return err
			}
			if err := os.MkdirAll(filepath.Dir(output), 0o755); err != nil {
				return err
			}
			return os.WriteFile(output, out, 0o644)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the table to this file (its folder created) instead of stdout")
	return cmd
}

func newVersionCmd(stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the build's version, commit, Go version and platform",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			info := buildinfo.Read()
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			_, err := fmt.Fprintln(stdout, "lucid", info)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", args[0])}
	}
	return nil
}
