package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deploy"
	"github.com/pickme/lucid/pkg/sshx"
)

func TestExitCode(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want int
	}{
		{"nil", live, nil, ExitOK},
		{"plain", live, errors.New("boom"), ExitFailure},
		{"usage", live, Usage(errors.New("bad flag")), ExitUsage},
		{"wrapped usage", live, fmt.Errorf("ctx: %w", Usage(errors.New("x"))), ExitUsage},
		{"problems", live, Problems(errors.New("3 problems")), ExitProblems},
		{"auth", live, Auth(errors.New("permission denied (publickey)")), ExitAuth},
		{"hint keeps code", live, WithHint(Auth(errors.New("x")), "try ssh-add"), ExitAuth},
		{"silent", live, &SilentError{Code: ExitProblems}, ExitProblems},
		{"usage by message alone", live, errors.New(`unknown command "x" for "lucidctl"`), ExitFailure},
		{"usage pointed at a command", live, UsageOf(Usage(errors.New("x")), "lucidctl deploy"), ExitUsage},
		{"interrupted", cancelled, errors.New("read: use of closed connection"), ExitInterrupted},
		{"cancelled without interrupt", live, context.Canceled, ExitFailure},
		{"interrupted but succeeded", cancelled, nil, ExitOK},
	}
	for _, tt := range tests {
		if got := ExitCode(tt.ctx, tt.err); got != tt.want {
			t.Errorf("%s: ExitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestHints(t *testing.T) {
	if h := Hint(fmt.Errorf("token: %w", auth.ErrWeakSecret)); !strings.Contains(h, "JWT_SECRET_KEY") {
		t.Errorf("weak secret hint = %q", h)
	}
	if h := Hint(Auth(fmt.Errorf("pi: %w", sshx.ErrUnknownHostKey))); !strings.Contains(h, "--accept-new-host-key") {
		t.Errorf("unknown host key hint = %q", h)
	}
	if h := Hint(fmt.Errorf("pi: %w: ci@builder", deploy.ErrLocked)); !strings.Contains(h, "--lock-wait") {
		t.Errorf("deploy lock hint = %q", h)
	}
	if h := Hint(fmt.Errorf("pi: %w", deploy.ErrNoFlock)); !strings.Contains(h, "util-linux") {
		t.Errorf("missing flock hint = %q", h)
	}
	if h := Hint(fmt.Errorf("deploy: %w", &deploy.SecretChangeError{Target: "pi", Keys: []string{"ENCRYPTION_KEY"}})); !strings.Contains(h, "lucidctl secrets pull --target pi") || !strings.Contains(h, "--rotate KEY") {
		t.Errorf("secret change hint: %q", h)
	}
	if h := Hint(fmt.Errorf("pi: %w", &deploy.RecordError{Release: "r1", Status: deploy.ReleaseLive, Err: errors.New("no space left on device")})); !strings.Contains(h, "lucidctl releases") {
		t.Errorf("record error hint = %q", h)
	}
	if h := Hint(WithHint(errors.New("x"), "do y")); h != "do y" {
		t.Errorf("explicit hint = %q", h)
	}
	if h := Hint(UsageOf(Usage(errors.New("x")), "lucidctl verify chain")); h != "see `lucidctl verify chain --help`" {
		t.Errorf("usage hint = %q", h)
	}
	if h := Hint(UsageOf(errors.New("x"), "lucidctl verify chain")); h != "" {
		t.Errorf("a failure that is no usage error got hint %q", h)
	}
	if h := Hint(errors.New("x")); h != "" {
		t.Errorf("unknown error got hint %q", h)
	}
}

func TestReport(t *testing.T) {
	io, _, out, errOut := iostreams.Test()
	code := Report(context.Background(), io, WithHint(Problems(errors.New("2 checks failed")), "see above"))
	if code != ExitProblems || out.Len() != 0 {
		t.Fatalf("code %d, stdout %q", code, out.String())
	}
	if got := errOut.String(); got != "error: 2 checks failed\nhint: see above\n" {
		t.Errorf("stderr = %q", got)
	}
	errOut.Reset()
	if code := Report(context.Background(), io, &SilentError{Code: 3}); code != 3 || errOut.Len() != 0 {
		t.Errorf("silent error printed %q", errOut.String())
	}
}
