package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/deployfiles"
	"github.com/pickme/lucid/pkg/envfile"
	"github.com/pickme/lucid/pkg/keyring"
	"github.com/pickme/lucid/pkg/restoredata"
)

// envSource is a backup holding only env files.
type envSource map[string][]byte

func (s envSource) ID() string                       { return "test" }
func (s envSource) Services() []snapshotapi.Manifest { return nil }
func (s envSource) EnvFiles() []snapshotapi.File {
	var out []snapshotapi.File
	for p, b := range s {
		out = append(out, restoredata.FileOf(p, b))
	}
	return out
}

func (s envSource) Open(_ context.Context, service, p string) (io.ReadCloser, error) {
	if service != EnvService {
		return nil, errors.New("no such service")
	}
	return io.NopCloser(strings.NewReader(string(s[p]))), nil
}

// TestRestoredEnvFilesAreBoundToTheHost: env files written back from
// another host's backup (pi1's, restored onto pi2) hold pi2's operator
// credentials, not pi1's: pi1's services could otherwise replay to pi2's
// what the operator sends them, and lucidctl's own calls to pi2 would be
// refused. Without the operator token the files cannot be bound, and
// say so.
func TestRestoredEnvFilesAreBoundToTheHost(t *testing.T) {
	const token = "operator-token-for-tests"
	p := deployfiles.ServiceEnvPath("engine")
	hashFor := func(host string) string {
		return auth.OperatorTokenHash(auth.OperatorCredential(token, "engine", host))
	}
	src := envSource{p: []byte("ENCRYPTION_KEY=k\nLUCID_OPERATOR_TOKEN_SHA256=" + hashFor("pi1") + "\n")}
	deployed := map[string][]byte{p: []byte("ENCRYPTION_KEY=k\nLUCID_OPERATOR_TOKEN_SHA256=" + hashFor("pi2") + "\n")}

	var out Output
	write, unbound, err := envDiff(t.Context(), src, deployed, token, "pi2", &out, t.Logf)
	if err != nil || unbound {
		t.Fatalf("envDiff: %v, unbound %v", err, unbound)
	}
	if len(write) != 0 || len(out.EnvDiffer) != 0 {
		t.Fatalf("pi1's backup, bound to pi2, differs from pi2's files: %v", out.EnvDiffer)
	}

	// A secret that differs is written back, bound to pi2.
	src[p] = []byte("ENCRYPTION_KEY=old\nLUCID_OPERATOR_TOKEN_SHA256=" + hashFor("pi1") + "\n")
	write, _, err = envDiff(t.Context(), src, deployed, token, "pi2", &Output{}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := envfile.Parse(write[p])
	if err != nil {
		t.Fatal(err)
	}
	if vals["ENCRYPTION_KEY"] != "old" || vals["LUCID_OPERATOR_TOKEN_SHA256"] != hashFor("pi2") {
		t.Fatalf("written back: %q", write[p])
	}

	if _, unbound, err := envDiff(t.Context(), src, deployed, "", "pi2", &Output{}, t.Logf); err != nil || !unbound {
		t.Fatalf("without the token: %v, unbound %v; want unbound", err, unbound)
	}

	// A path that is not a service's env file (an old release's shared
	// .env.core, or one a planted manifest chose) is left out, said so,
	// and the rest is written.
	src[deployfiles.EnvPath] = []byte("JWT_SECRET_KEY=x\n")
	src["../../.ssh/authorized_keys"] = []byte("ssh-ed25519 AAAA evil\n")
	var said []string
	write, _, err = envDiff(t.Context(), src, deployed, token, "pi2", &Output{}, func(f string, a ...any) { said = append(said, fmt.Sprintf(f, a...)) })
	if err != nil || len(write) != 1 || write[p] == nil {
		t.Fatalf("with paths that are not services' env files: %v, writes %v", err, slices.Collect(maps.Keys(write)))
	}
	if len(said) != 2 {
		t.Errorf("notes: %q, want one for each path left out", said)
	}
}

// TestRestoreRefusesPacksTheDeployedKeysCannotRead: a backup whose data
// chain env file holds an encryption key the deployed one lacks (current
// or previous) is refused before anything stops, naming no key; a
// deployed key set that still holds the backup's, rotated since, reads
// its packs.
func TestRestoreRefusesPacksTheDeployedKeysCannotRead(t *testing.T) {
	prev := func(keys ...string) string {
		var e []keyring.Entry
		for _, k := range keys {
			e = append(e, keyring.Entry{Value: []byte(k)})
		}
		return keyring.EncryptionPrevious + "=" + keyring.Format(e) + "\n"
	}
	backup := []byte("ENCRYPTION_KEY=backup-key-0123456789abcdef0123456789\n" + prev("older-key-0123456789abcdef0123456789"))
	for name, tc := range map[string]struct {
		deployed string
		missing  int
	}{
		"the same keys":         {string(backup), 0},
		"rotated since":         {"ENCRYPTION_KEY=newer-key-0123456789abcdef01234567\n" + prev("backup-key-0123456789abcdef0123456789", "older-key-0123456789abcdef0123456789"), 0},
		"another key":           {"ENCRYPTION_KEY=fresh-key-0123456789abcdef012345678\n", 2},
		"the older key dropped": {"ENCRYPTION_KEY=backup-key-0123456789abcdef0123456789\n", 1},
	} {
		err := keysReadBy(backup, []byte(tc.deployed))
		switch {
		case tc.missing == 0 && err != nil:
			t.Errorf("%s: %v", name, err)
		case tc.missing > 0 && (!errors.Is(err, ErrKeysUnreadable) || !strings.Contains(err.Error(), fmt.Sprintf("%d of the 2 encryption keys", tc.missing))):
			t.Errorf("%s: %v, want %d keys missing", name, err, tc.missing)
		case err != nil && strings.Contains(err.Error(), "0123456789abcdef"):
			t.Errorf("%s: the error shows a key: %v", name, err)
		}
	}
}

// TestDataChainEnvOfAnOlderBackup: the data chain's keys are read from its
// own env file, or from the shared .env.core of a backup taken before each
// service had one.
func TestDataChainEnvOfAnOlderBackup(t *testing.T) {
	own, core := deployfiles.ServiceEnvPath("datachain"), deployfiles.EnvPath
	for name, tc := range map[string]struct {
		src  envSource
		want string
	}{
		"its own":        {envSource{own: []byte("ENCRYPTION_KEY=own\n"), core: []byte("ENCRYPTION_KEY=core\n")}, "ENCRYPTION_KEY=own\n"},
		"the shared one": {envSource{core: []byte("ENCRYPTION_KEY=core\n")}, "ENCRYPTION_KEY=core\n"},
		"neither":        {envSource{deployfiles.ServiceEnvPath("engine"): []byte("X=1\n")}, ""},
	} {
		b, err := dataChainEnvOf(t.Context(), tc.src)
		if err != nil || string(b) != tc.want {
			t.Errorf("%s: %q, %v; want %q", name, b, err, tc.want)
		}
	}
}
