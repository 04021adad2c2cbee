package api

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestBearerStaysWithItsHost: a transport's bearer token goes with every
// request to the host it was meant for, redirects there included, and
// never to another host a redirect names (a gateway URL that answers 302
// elsewhere, by mistake or by design).
func TestBearerStaysWithItsHost(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{}
	record := func(who string, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen[who] = r.Header.Get("Authorization")
	}
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { record("other", r) }))
	defer other.Close()
	home := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/away":
			http.Redirect(w, r, other.URL+"/taken", http.StatusFound)
		case "/moved":
			http.Redirect(w, r, "/here", http.StatusFound)
		default:
			record("home", r)
		}
	}))
	defer home.Close()
	hc := &http.Client{Transport: WithBearer(nil, "SECRET")}
	for _, path := range []string{"/away", "/moved"} {
		resp, err := hc.Get(home.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if got := seen["other"]; got != "" {
		t.Errorf("a redirect to another host carried Authorization %q", got)
	}
	if got := seen["home"]; got != "Bearer SECRET" {
		t.Errorf("a redirect on the same host carried Authorization %q, want the token", got)
	}
}

// TestABlockAnswerIsReadWhole: an answer read as bytes may be as long as
// the largest block (32 MiB of transactions), not cut short at 16 MiB
// into something that fails to decode; a longer one is an error that
// says so.
func TestABlockAnswerIsReadWhole(t *testing.T) {
	size := 0
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(make([]byte, size))
	}))
	defer hs.Close()
	for _, n := range []int{33 << 20, MaxRawAnswer} {
		size = n
		var raw []byte
		if err := Do(t.Context(), hs.Client(), Request{Method: http.MethodGet, URL: hs.URL}, &raw); err != nil || len(raw) != n {
			t.Errorf("an answer of %d bytes: %d read, %v", n, len(raw), err)
		}
	}
	size = MaxRawAnswer + 1
	var raw []byte
	if err := Do(t.Context(), hs.Client(), Request{Method: http.MethodGet, URL: hs.URL}, &raw); err == nil || raw != nil {
		t.Errorf("an answer over the bound: %d bytes, %v", len(raw), err)
	}
}
