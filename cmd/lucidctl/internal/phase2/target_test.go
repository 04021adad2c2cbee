package phase2

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/auth"
)

// A secret too weak to sign with is refused once, naming where it came
// from and never its value, before any scenario runs.
func TestWeakSecretIsRefusedUpFront(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	env := cli.NewEnv(io, func(k string) string {
		if k == "JWT_SECRET_KEY" {
			return "short-secret"
		}
		return ""
	})
	env.ConfigPath = filepath.Join(t.TempDir(), "lucid.yaml")
	_, err := targetFlags{}.resolve(context.Background(), env)
	if !errors.Is(err, auth.ErrWeakSecret) || !strings.Contains(err.Error(), "the environment") || strings.Contains(err.Error(), "short-secret") {
		t.Fatalf("resolve with a short secret: %v", err)
	}
}
