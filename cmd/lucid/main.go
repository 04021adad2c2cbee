// Command lucid is Lucid's service binary: one executable that runs any core
// service as `lucid <service>` (gateway, mesh, engine, anchoring, blocks,
// datachain), so that every image shares one layer.
//
// Exit codes: 0 clean stop, 1 failure, 2 usage or configuration error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/pickme/lucid/pkg/restoredata"
	"github.com/pickme/lucid/pkg/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks a command-line mistake (exit 2).
type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	_, _ = fmt.Fprintln(stderr, "lucid:", err) // stderr is the last place to report to
	var ue usageError
	var ce *service.ConfigError
	switch {
	case errors.As(err, &ue) || errors.As(err, &ce):
		return 2
	case errors.Is(err, restoredata.ErrUnchanged):
		return restoredata.ExitUnchanged
	}
	return 1
}
