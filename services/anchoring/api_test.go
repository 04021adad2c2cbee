package anchoring

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

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
	hs := startAnchoringWith(t, map[string]string{"LUCID_ANCHORS_PER_DAY_FREE": "2"})
	alice := servicetest.User("alice@example.org")
	for i := range 3 {
		m := chaintest.Anchor(i).Anchor
		m.Owner = ""
		body, _ := json.Marshal(m)
		resp, err := alice.Post(hs.URL+"/api/v1/anchors", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		text, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case i < 2 && resp.StatusCode != http.StatusAccepted:
			t.Fatalf("anchor %d: %d %s", i, resp.StatusCode, text)
		case i == 2:
			retry, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			if resp.StatusCode != http.StatusTooManyRequests || retry < 1 || retry > 86400 || !strings.Contains(string(text), "2 new anchors a day is what your tier may submit here") {
				t.Errorf("a third anchor the same day: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), text)
			}
		}
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
