package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/observe"
	"github.com/pickme/lucid/pkg/catalog"
	"github.com/pickme/lucid/pkg/deploy"
)

// LogsOptions are the inputs of `lucidctl logs`.
type LogsOptions struct {
	Env     *cli.Env
	Service string
	Follow  bool
	Tail    int
	// PortOffset names the stack; nil takes local.port_offset of lucid.yaml.
	PortOffset *int
	// Remote are the inputs with --target: deployed hosts' logs.
	Remote observe.LogsOptions
	Fleet  fleet.Flags
	grep   string
}

func newLogsCmd(env *cli.Env) *cobra.Command {
	opts := &LogsOptions{Env: env}
	var offset int
	cmd := &cobra.Command{
		Use:   "logs [service...]",
		Short: "Print the local stack's logs, or deployed hosts'",
		Long: `Print the logs of the local stack: every service merged, each line prefixed
with its service, or one service's own log. "lucidctl" names the supervisor's
own lines (starts, deaths, restarts).

With --target (a target or group of lucid.yaml), print the deployed
services' logs instead, from each host's Docker Engine over SSH: every
service, or those named, merged as they arrive and prefixed with the
service (and the host, with several). The services' JSON log records are
shown as time, level, message and a few key=value; --raw prints them as
written, --json one JSON object per line. -f follows until interrupted,
across restarts and recreations of the containers.`,
		Example: `  lucidctl logs
  lucidctl logs -f gateway
  lucidctl logs --tail 50 engine
  lucidctl logs --port-offset 1000 gateway
  lucidctl logs --target pi -f engine anchoring
  lucidctl logs --target fleet --since 10m --grep 'level":"(WARN|ERROR)'`,
		Args:      cobra.MatchAll(cli.OnlyValidArgs, logsArgs(&opts.Fleet)),
		ValidArgs: append(catalog.Names(), consulName, supervisorName),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Fleet.Target != "" {
				return runRemoteLogs(cmd, opts, args)
			}
			if err := localOnly(cmd); err != nil {
				return err
			}
			for _, name := range []string{"since", "grep", "raw"} {
				if cmd.Flags().Changed(name) {
					return cli.Usage(fmt.Errorf("--%s needs --target: the local stack's logs take --tail and -f", name))
				}
			}
			if opts.Env.JSON {
				return cli.Usage(errors.New("logs of the local stack have no --json output; with --target they do"))
			}
			if len(args) == 1 {
				opts.Service = args[0]
			}
			opts.PortOffset = givenOffset(cmd, offset)
			return runLogs(cmd.Context(), opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.Follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVarP(&opts.Tail, "tail", "n", -1, "print only the last N lines (-1: all; with --target, per service)")
	cmd.Flags().DurationVar(&opts.Remote.Since, "since", 0, "with --target: only lines of the last DURATION (10m, 2h)")
	cmd.Flags().StringVar(&opts.grep, "grep", "", "with --target: only lines that match this regular expression (RE2, on the line as written)")
	cmd.Flags().BoolVar(&opts.Remote.Raw, "raw", false, "with --target: print the lines as the services wrote them")
	portOffsetFlag(cmd, &offset, "the port offset of the stack (default: local.port_offset of lucid.yaml)")
	opts.Fleet.Add(cmd.Flags(), "print these deployed hosts' logs (a target or group of lucid.yaml) instead of the local stack's")
	fleet.Complete(cmd, env)
	return cli.SupportsJSON(cmd)
}

// logsArgs allows one service for the local stack, any number of the
// deployed services with --target.
func logsArgs(f *fleet.Flags) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if f.Target == "" {
			return cli.MaxArgs(1)(cmd, args)
		}
		if slices.Contains(args, supervisorName) {
			return cli.Usage(fmt.Errorf("%q is the local supervisor; a deployed host has none (its services: %s)", supervisorName, strings.Join(deploy.LogServices(), ", ")))
		}
		return nil
	}
}

func runRemoteLogs(cmd *cobra.Command, opts *LogsOptions, args []string) error {
	if cmd.Flags().Changed("port-offset") {
		return cli.Usage(errors.New("--port-offset names a local stack; it does not go with --target"))
	}
	r := opts.Remote
	r.Env, r.Fleet, r.Services, r.Follow, r.Tail = opts.Env, &opts.Fleet, args, opts.Follow, opts.Tail
	if opts.grep != "" {
		re, err := regexp.Compile(opts.grep)
		if err != nil {
			return cli.Usage(fmt.Errorf("--grep: %w", err))
		}
		r.Grep = re
	}
	if r.Since < 0 {
		return cli.Usage(errors.New("--since wants a positive duration (10m, 2h)"))
	}
	return observe.RunLogs(cmd.Context(), &r)
}

func runLogs(ctx context.Context, opts *LogsOptions) error {
	l, err := stackLayout(opts.Env, opts.PortOffset)
	if err != nil {
		return err
	}
	path := l.stackLog()
	if s := opts.Service; s != "" && s != supervisorName {
		path = l.serviceLog(s)
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cli.WithHint(fmt.Errorf("no logs yet at %s", path), "`lucidctl up` starts the stack")
	}
	if err != nil {
		return err
	}
	// Only read. The closure closes whichever file -f has moved on to.
	defer func() { _ = f.Close() }()

	w := &lineWriter{out: opts.Env.IO.Out, styles: opts.Env.IO.OutStyles(), only: ""}
	if opts.Service == supervisorName {
		w.only = supervisorName
	}
	if opts.Service == "" || opts.Service == supervisorName {
		w.prefixed = true
	}
	if opts.Tail >= 0 && w.only == "" {
		if err := skipToTail(f, opts.Tail); err != nil {
			return err
		}
	}
	r := bufio.NewReader(f)
	if opts.Tail >= 0 && w.only != "" {
		// Filtered lines: keep the last N that match, then print them.
		if err := w.tail(r, opts.Tail); err != nil {
			return err
		}
	}
	var partial []byte
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			w.write(append(partial, line[:len(line)-1]...))
			partial = partial[:0]
		} else {
			partial = append(partial, line...)
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		if !opts.Follow {
			if len(partial) > 0 {
				w.write(partial)
			}
			return nil
		}
		// A new run or a rotation replaced the file: what was left in the
		// old one has just been read, so move to the new one.
		if moved(f, path) {
			nf, err := os.Open(path)
			if err == nil {
				_ = f.Close() // only read, and read to its end
				f, r = nf, bufio.NewReader(nf)
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil // Ctrl-C is how -f ends
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// moved reports whether path no longer names the open file f, or f shrank.
func moved(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	if err1 != nil || err2 != nil {
		return false
	}
	if !os.SameFile(a, b) {
		return true
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	return err == nil && b.Size() < pos
}

// skipToTail positions f at the start of its last n lines.
func skipToTail(f *os.File, n int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if n == 0 {
		_, err := f.Seek(0, io.SeekEnd)
		return err
	}
	const block = 64 << 10
	buf := make([]byte, block)
	count := 0
	for off := size; off > 0; {
		step := min(int64(block), off)
		off -= step
		if _, err := f.ReadAt(buf[:step], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for i := step - 1; i >= 0; i-- {
			// The newline ending the last line does not start a line.
			if buf[i] != '\n' || off+i == size-1 {
				continue
			}
			count++
			if count == n {
				_, err := f.Seek(off+i+1, io.SeekStart)
				return err
			}
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// lineWriter prints log lines, coloring the "<service> |" prefix of merged
// lines on a terminal.
type lineWriter struct {
	out      io.Writer
	styles   *iostreams.Styles
	prefixed bool
	only     string
	colors   map[string]int
}

// tail reads r to its end and prints the last n lines that pass the
// filter.
func (w *lineWriter) tail(r *bufio.Reader, n int) error {
	var keep [][]byte
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			line = line[:len(line)-1]
			if w.passes(line) {
				keep = append(keep, line)
				if len(keep) > n {
					keep = keep[1:]
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	for _, l := range keep {
		w.write(l)
	}
	return nil
}

func (w *lineWriter) passes(line []byte) bool {
	if w.only == "" {
		return true
	}
	name, _, _ := strings.Cut(string(line), " | ")
	return name == w.only
}

func (w *lineWriter) write(line []byte) {
	if !w.prefixed {
		fmt.Fprintf(w.out, "%s\n", line)
		return
	}
	name, rest, ok := strings.Cut(string(line), " | ")
	if !ok {
		fmt.Fprintf(w.out, "%s\n", line)
		return
	}
	if w.only != "" && name != w.only {
		return
	}
	if w.colors == nil {
		w.colors = map[string]int{}
	}
	i, ok := w.colors[name]
	if !ok {
		i = len(w.colors)
		w.colors[name] = i
	}
	fmt.Fprintf(w.out, "%s %s\n", w.styles.Pick(i).Render(fmt.Sprintf("%-9s |", name)), rest)
}
