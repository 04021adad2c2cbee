package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/cmd/lucidctl/internal/root"
	"github.com/pickme/lucid/pkg/chain/chaintest"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	io, _, out, errOut := iostreams.Test()
	code := root.Execute(context.Background(), args, io, func(string) string { return "" })
	return code, out.String(), errOut.String()
}

func fixture(t *testing.T) (*chaintest.Chain, string) {
	c := chaintest.New()
	c.Append(chaintest.Anchor(1), chaintest.Anchor(2))
	c.Append(chaintest.Anchor(3))
	p := filepath.Join(t.TempDir(), "r.tlog-proof")
	if err := os.WriteFile(p, c.Receipt(2, 2).Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	return c, p
}

func TestVerifyReceipt(t *testing.T) {
	c, path := fixture(t)
	code, out, errOut := run(t, "verify", "receipt", path, "--key", c.Verifier)
	if code != 0 || !strings.Contains(out, "receipt OK") || !strings.Contains(out, "00000000-0000-4000-8000-000000000002") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}

	// One flipped byte, a foreign key, and --json all report precisely.
	data, _ := os.ReadFile(path)
	bad := bytes.Replace(data, []byte("index 2"), []byte("index 1"), 1)
	badPath := filepath.Join(t.TempDir(), "bad.tlog-proof")
	_ = os.WriteFile(badPath, bad, 0o644)
	code, out, errOut = run(t, "verify", "receipt", badPath, "--key", c.Verifier)
	if code != cli.ExitProblems || !strings.Contains(errOut, "inclusion proof does not lead to the checkpoint's root") || out != "" {
		t.Errorf("altered receipt: exit %d %q %q", code, out, errOut)
	}
	_, other := chaintest.Key("validator-1", 99)
	code, _, errOut = run(t, "verify", "receipt", path, "--key", other)
	if code != cli.ExitProblems || !strings.Contains(errOut, "not signed by a known validator") {
		t.Errorf("foreign key: exit %d %q", code, errOut)
	}
	code, out, _ = run(t, "verify", "receipt", badPath, "--key", c.Verifier, "--json")
	var res map[string]any
	if code != cli.ExitProblems || json.Unmarshal([]byte(out), &res) != nil || res["valid"] != false || res["reason"] == "" {
		t.Errorf("--json: exit %d %q", code, out)
	}
	if code, _, _ := run(t, "verify", "receipt", path); code != cli.ExitUsage {
		t.Errorf("missing --key: exit %d, want 2", code)
	}
	if code, _, _ := run(t, "verify", "receipt", path, "--key", "garbage"); code != cli.ExitUsage {
		t.Errorf("bad --key: exit %d, want 2", code)
	}
}

// chainServer serves a chaintest chain the way the engine does.
func chainServer(t *testing.T, c *chaintest.Chain) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/chain" {
			_ = json.NewEncoder(w).Encode(map[string]any{"chain_id": chaintest.ChainID, "height": len(c.Blocks), "validators": []string{c.Verifier}})
			return
		}
		h, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/api/v1/blocks/"))
		if err != nil || h < 1 || h > len(c.Blocks) {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(c.Blocks[h-1])
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestVerifyChain(t *testing.T) {
	c := chaintest.New()
	for i := 0; i < 30; i++ {
		c.Append(chaintest.Anchor(3*i), chaintest.Anchor(3*i+1), chaintest.Anchor(3*i+2))
	}
	srv := chainServer(t, c)
	code, out, errOut := run(t, "verify", "chain", "--url", srv.URL, "--key", c.Verifier)
	if code != 0 || !strings.Contains(out, "chain OK: 30 blocks, 91 transactions") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	// Block 17 altered in storage: found, named, exit 3.
	b := *c.Blocks[16]
	b.Transactions = append([]json.RawMessage(nil), b.Transactions...)
	b.Transactions[1] = json.RawMessage(strings.Replace(string(b.Transactions[1]), "operator@", "intruder@", 1))
	c.Blocks[16] = &b
	code, _, errOut = run(t, "verify", "chain", "--url", srv.URL, "--key", c.Verifier)
	if code != cli.ExitProblems || !strings.Contains(errOut, "block 17 rejected: root does not match the transactions") {
		t.Errorf("altered block: exit %d %q", code, errOut)
	}
}
