package consulacl

import (
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/envconfig"
)

const management = "3f0c8a52-9d1e-4b7a-8c65-2e4f1a9b7d30"

func TestToken(t *testing.T) {
	for _, tc := range []struct {
		value string
		ok    bool
	}{{management, true}, {strings.ToUpper(management), true}, {"", false}, {strings.Repeat("k", 40), false}, {"3f0c8a52-9d1e-4b7a-8c65-2e4f1a9b7d3", false}} {
		r := envconfig.New(envconfig.Map(map[string]string{EnvToken: tc.value}))
		got := Token(r, "for a test")
		if err := r.Err(); (err == nil) != tc.ok {
			t.Errorf("Token(%q): %v, want ok=%v", tc.value, err, tc.ok)
		} else if err != nil && tc.value != "" && strings.Contains(err.Error(), tc.value) {
			t.Errorf("the error shows the value: %v", err)
		}
		if tc.ok && got != tc.value {
			t.Errorf("Token = %q", got)
		}
	}
}
