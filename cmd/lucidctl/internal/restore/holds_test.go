package restore

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/api/datachainapi"
	"github.com/pickme/lucid/pkg/api/engineapi"
	"github.com/pickme/lucid/pkg/api/snapshotapi"
	"github.com/pickme/lucid/pkg/packstore"
)

// hostServices answers the engine's chain and the data chain's status as
// a running host would.
type hostServices struct{ url string }

func (h hostServices) Client(context.Context, string, time.Duration) (*http.Client, string, error) {
	return http.DefaultClient, h.url, nil
}

// TestHoldsDataSaysWhatTheBackupLacks: the confirmation before a restore
// says how far the host is ahead of the backup, and what that costs, so
// that an older backup is not put over newer anchors unread.
func TestHoldsDataSaysWhatTheBackupLacks(t *testing.T) {
	chainInfo := engineapi.ChainInfo{ChainID: "lucid-a", Height: 120, TreeSize: 300}
	status := datachainapi.Status{Stats: packstore.Stats{Chunks: 50, Sessions: 5}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/chain":
			_ = json.NewEncoder(w).Encode(chainInfo)
		case "/api/v1/status":
			_ = json.NewEncoder(w).Encode(status)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	host := hostServices{srv.URL}
	ctx := context.Background()

	for _, tc := range []struct {
		name   string
		backup snapshotapi.Facts
		want   []string
		not    []string
	}{
		{"an older backup", snapshotapi.Facts{
			Chain:     &snapshotapi.ChainFacts{ChainID: "lucid-a", Height: 100, TreeSize: 260},
			DataChain: &snapshotapi.DataChainFacts{Chunks: 40},
		}, []string{
			"the chain holds 300 transactions in 120 blocks, 40 transactions in 20 blocks more than the backup",
			"anchors in them are lost unless another block manager holds them",
			"take a backup of the host first",
			"the data chain holds 50 chunks of 5 sessions, 10 more than the backup",
		}, nil},
		{"a backup as new as the host", snapshotapi.Facts{
			Chain:     &snapshotapi.ChainFacts{ChainID: "lucid-a", Height: 120, TreeSize: 300},
			DataChain: &snapshotapi.DataChainFacts{Chunks: 50},
		}, []string{"the chain holds 300 transactions in 120 blocks", "the data chain holds 50 chunks of 5 sessions"},
			[]string{"more than the backup", "another chain"}},
		{"another chain's backup", snapshotapi.Facts{
			Chain: &snapshotapi.ChainFacts{ChainID: "lucid-b", Height: 500, TreeSize: 900},
		}, []string{"of another chain than the backup's (lucid-a, the backup's lucid-b)"}, []string{"more than the backup"}},
	} {
		got := strings.Join(holdsData(ctx, host, tc.backup), "; ")
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", tc.name, got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: %q says %q", tc.name, got, n)
			}
		}
	}
}
