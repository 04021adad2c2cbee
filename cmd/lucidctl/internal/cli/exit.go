package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/projectconfig"
	"github.com/pickme/lucid/pkg/sshx"
	"github.com/pickme/lucid/pkg/yamlkeys"
)

// Exit codes, documented in docs/cli.md. Scripts rely on them.
const (
	ExitOK          = 0
	ExitFailure     = 1
	ExitUsage       = 2
	ExitProblems    = 3 // a verification ran and found problems
	ExitAuth        = 4 // SSH or authentication failed
	ExitInterrupted = 130
)

// codedError carries an exit code and an optional hint.
type codedError struct {
	code int
	hint string
	err  error
	// help is the command whose --help a usage error points at, set by
	// Execute once it knows which command failed.
	help string
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// Usage marks err as a command-line mistake (exit 2).
func Usage(err error) error { return &codedError{code: ExitUsage, err: err} }

// IsUsage reports whether err is a command-line mistake.
func IsUsage(err error) bool {
	var ce *codedError
	return errors.As(err, &ce) && ce.code == ExitUsage
}

// UsageOf points a usage error at the --help of the command path given (for
// example "lucidctl deploy"); other errors are returned as they are.
func UsageOf(err error, commandPath string) error {
	if !IsUsage(err) {
		return err
	}
	return &codedError{code: ExitUsage, err: err, help: commandPath}
}

// Problems marks err as a verification that found problems (exit 3).
func Problems(err error) error { return &codedError{code: ExitProblems, err: err} }

// Auth marks err as an SSH or authentication failure (exit 4).
func Auth(err error) error { return &codedError{code: ExitAuth, err: err} }

// WithHint attaches a one-line hint, shown under the error.
func WithHint(err error, hint string) error {
	code := ExitFailure
	var ce *codedError
	if errors.As(err, &ce) {
		code = ce.code
	}
	return &codedError{code: code, hint: hint, err: err}
}

// SilentError is returned by a command that has already reported its
// failure (a status table, a list of problems); only its code matters.
type SilentError struct{ Code int }

func (e *SilentError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// knownHints gives known failures their hint, in one place.
var knownHints = []struct {
	err  error
	hint string
}{
	{auth.ErrWeakSecret, "generate one with `lucidctl up` (local) or `lucidctl render`, or export a JWT_SECRET_KEY of at least 32 characters"},
	{yamlkeys.ErrUnknownKey, "fix the key's spelling: the error lists the keys allowed there"},
	{projectconfig.ErrNotFound, "run lucidctl from the project directory, or name the file with --config"},
	{sshx.ErrUnknownHostKey, "check the fingerprint with the host's owner, then run again with --accept-new-host-key"},
	{deploy.ErrLocked, "wait for it with --lock-wait; a lock past its expiry is taken over by the next deploy. If its holder is gone for sure (a laptop that died mid-deploy), remove the lock file on the host: a holder still alive notices at its next renewal and stops"},
	{deploy.ErrNoFlock, "install util-linux on the host (sudo apt-get install util-linux), which Raspberry Pi OS and Debian normally include"},
}

// ExitCode maps err to lucidctl's exit code. ctx is the command's context:
// once it is cancelled (Ctrl-C, SIGTERM) the result is 130 whatever failed.
func ExitCode(ctx context.Context, err error) int {
	if err == nil {
		return ExitOK
	}
	if ctx.Err() != nil {
		return ExitInterrupted
	}
	var se *SilentError
	if errors.As(err, &se) {
		return se.Code
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return ExitFailure
}

// Hint returns the hint for err, or "".
func Hint(err error) string {
	var ce *codedError
	help := ""
	for e := err; errors.As(e, &ce); e = ce.err {
		if ce.hint != "" {
			return ce.hint
		}
		if help == "" {
			help = ce.help
		}
	}
	for _, h := range knownHints {
		if errors.Is(err, h.err) {
			return h.hint
		}
	}
	var sc *deploy.SecretChangeError
	if errors.As(err, &sc) && sc.Rollback != "" {
		return "`lucidctl rollback " + sc.Target + " " + sc.Rollback + " --rotate KEY` brings an older value back on purpose; the data sealed or tokens issued under the newer one may then fail"
	}
	if errors.As(err, &sc) {
		return "`lucidctl secrets pull --target " + sc.Target + "` takes the host's secrets; --rotate KEY replaces one on purpose"
	}
	var re *deploy.RecordError
	if errors.As(err, &re) {
		return "the host's deploy dir could not be written (full disk? permissions?): free it, then `lucidctl releases TARGET` shows what each release is recorded as"
	}
	if help != "" {
		return "see `" + help + " --help`"
	}
	if IsUsage(err) {
		return "see `lucidctl --help`"
	}
	return ""
}

// Report prints err and its hint to stderr and returns the exit code.
func Report(ctx context.Context, io *iostreams.IOStreams, err error) int {
	code := ExitCode(ctx, err)
	if err == nil {
		return code
	}
	var se *SilentError
	if errors.As(err, &se) {
		return code
	}
	st := io.ErrStyles()
	if code == ExitInterrupted {
		fmt.Fprintln(io.ErrOut, st.Warning.Render("interrupted"))
		return code
	}
	printError(io.ErrOut, st, err)
	if h := Hint(err); h != "" {
		fmt.Fprintln(io.ErrOut, st.Dim.Render("hint: "+iostreams.SafeText(h)))
	}
	return code
}

func printError(w io.Writer, st *iostreams.Styles, err error) {
	// An error may quote a host's or a service's words (a remote
	// command's stderr), which may hold escape sequences.
	fmt.Fprintln(w, st.Error.Render("error:")+" "+iostreams.SafeText(err.Error()))
}
