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
