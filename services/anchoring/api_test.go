package anchoring

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pickme/lucid/pkg/auth"
	"github.com/pickme/lucid/pkg/chain/chaintest"
	"github.com/pickme/lucid/pkg/service"
	"github.com/pickme/lucid/pkg/service/servicetest"
)

// TestPaddedTimeIsRefused: a manifest whose time parses but carries
// thousands of fraction digits makes a transaction the engine refuses, so
// anchoring refuses it (400) rather than accept it (202), hold the
// session's key with a refused anchor and answer every later manifest 409.
func TestPaddedTimeIsRefused(t *testing.T) {
	hs := startAnchoring(t)
	m := chaintest.Anchor(1).Anchor
	owner := &service.Principal{Subject: m.Owner, Tier: auth.TierFree}
	client := &http.Client{Transport: &servicetest.Transport{Caller: "gateway", Principal: owner, Base: http.DefaultTransport}}
	post := func(body []byte) (int, string) {
		t.Helper()
		resp, err := client.Post(hs.URL+"/api/v1/anchors", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	padded := *m
	padded.StartedAt = "2026-11-26T09:00:00." + strings.Repeat("0", 16000) + "Z"
	body, _ := json.Marshal(&padded)
	if code, resp := post(body); code != http.StatusBadRequest || !strings.Contains(resp, "started_at") {
		t.Fatalf("a padded time: %d %.300s, want 400 naming started_at", code, resp)
	}
	body, _ = json.Marshal(m)
	if code, resp := post(body); code != http.StatusAccepted {
		t.Fatalf("the corrected manifest: %d %s, want 202", code, resp)
	}
}

// TestAUsersAnchorsADayAreBounded: past its tier's anchors of a day, a
// user's new anchor gets 429 with Retry-After until midnight UTC and a
// message that says so; the refusal is counted.
func TestAUsersAnchorsADayAreBounded(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 7, 23, 59, 0, 0, time.UTC)
	setNow := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
	hs := startAnchoringAt(t, map[string]string{"LUCID_ANCHORS_PER_DAY_FREE": "2"}, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	alice := servicetest.User("alice@example.org")
	post := func(i int) (*http.Response, string) {
		t.Helper()
		m := chaintest.Anchor(i).Anchor
		m.Owner = ""
		body, _ := json.Marshal(m)
		resp, err := alice.Post(hs.URL+"/api/v1/anchors", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(text)
	}
	for i := range 2 {
		if resp, text := post(i); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("anchor %d: %d %s", i, resp.StatusCode, text)
		}
	}
	setNow(time.Date(2026, 12, 7, 23, 59, 30, 0, time.UTC))
	resp, text := post(2)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "31" ||
		!strings.Contains(text, "2 new anchors a day is what your tier may submit here") || !strings.Contains(text, "submit again after 2026-12-08T00:00:00Z") {
		t.Errorf("a third anchor the same day: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), text)
	}
	// The same anchor again is always answered.
	if resp, text := post(0); resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		t.Errorf("the first anchor again, past the bound: %d %s", resp.StatusCode, text)
	}
	// A new UTC day: a new count.
	setNow(time.Date(2026, 12, 8, 0, 0, 1, 0, time.UTC))
	if resp, text := post(2); resp.StatusCode != http.StatusAccepted {
		t.Errorf("the third anchor the next day: %d %s", resp.StatusCode, text)
	}
	resp, err := servicetest.Operator().Get(hs.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), `lucid_anchoring_daily_limit_refusals_total{tier="free"} 1`) {
		t.Errorf("the refusal is not counted")
	}
}
