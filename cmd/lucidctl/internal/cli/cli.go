// Package cli is lucidctl's command plumbing shared by every command: the
// Env a command is built from (streams, logger, project file, global flags),
// JSON output, and the one place where errors become exit codes and hints.
package cli

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/projectconfig"
)

// Env is what commands are constructed with.
type Env struct {
	IO *iostreams.IOStreams
	// Getenv reads the environment; tests replace it.
	Getenv func(string) string
	// Logger writes diagnostics to stderr: text at debug level with
	// --verbose, warnings only otherwise.
	Logger *slog.Logger

	// Global flags.
	ConfigPath string
	Verbose    bool
	JSON       bool
	NoColor    bool

	configExplicit bool
	config         *projectconfig.Config
}

// NewEnv returns an Env over streams and an environment lookup.
func NewEnv(io *iostreams.IOStreams, getenv func(string) string) *Env {
	if getenv == nil {
		getenv = os.Getenv
	}
	return &Env{
		IO:         io,
		Getenv:     getenv,
		Logger:     slog.New(slog.DiscardHandler),
		ConfigPath: projectconfig.DefaultFile,
	}
}

// Init applies the global flags; the root command calls it once they are
// parsed.
func (e *Env) Init(cmd *cobra.Command) {
	if e.NoColor {
		e.IO.DisableColor()
	}
	level := slog.LevelWarn
	if e.Verbose {
		level = slog.LevelDebug
	}
	e.Logger = slog.New(slog.NewTextHandler(e.IO.ErrOut, &slog.HandlerOptions{Level: level}))
	// --config, then LUCID_CONFIG, then lucid.yaml in the working directory.
	if f := cmd.Flags().Lookup("config"); f != nil && f.Changed {
		e.configExplicit = true
	} else if p := e.Getenv("LUCID_CONFIG"); p != "" {
		e.ConfigPath, e.configExplicit = p, true
	}
}

// ConfigExplicit reports whether the project file was named (--config or
// LUCID_CONFIG) rather than defaulted.
func (e *Env) ConfigExplicit() bool { return e.configExplicit }

// Config loads the project file once. A missing lucid.yaml is fine (the
// defaults apply) unless it was named explicitly.
func (e *Env) Config() (*projectconfig.Config, error) {
	if e.config != nil {
		return e.config, nil
	}
	p, err := filepath.Abs(e.ConfigPath)
	if err != nil {
		return nil, err
	}
	c, err := projectconfig.Load(p, e.configExplicit)
	if err != nil {
		return nil, err
	}
	if err := c.ApplyEnv(e.Getenv); err != nil {
		return nil, err
	}
	e.config = c
	return c, nil
}

// annotationJSON marks commands that support --json.
const annotationJSON = "lucidctl/json"

// SupportsJSON marks cmd as one that honours --json.
func SupportsJSON(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[annotationJSON] = "true"
	return cmd
}

// CheckJSON refuses --json on a command that does not support it, rather
// than printing text to a script that expects JSON.
func (e *Env) CheckJSON(cmd *cobra.Command) error {
	if e.JSON && cmd.Annotations[annotationJSON] != "true" {
		return Usage(fmt.Errorf("%s has no --json output", cmd.CommandPath()))
	}
	return nil
}

// PrintJSON writes v to stdout as indented JSON: the only thing a --json
// command prints there.
func (e *Env) PrintJSON(v any) error {
	enc := json.NewEncoder(e.IO.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
