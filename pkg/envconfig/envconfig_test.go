package envconfig

import (
	"strings"
	"testing"
	"time"
)

func TestReader(t *testing.T) {
	r := New(Map(map[string]string{
		"PORT":    "8080",
		"BAD_INT": "eighty",
		"BIG":     "70000",
		"WAIT":    "2s",
		"BAD_DUR": "soon",
		"FLAG":    "true",
		"LEVEL":   "DEBUG",
		"SHORT":   "hunter2",
		"URL":     "redis://user:pw@localhost:6379/0",
	}))
	if got := r.Int("PORT", 1, 1, 65535); got != 8080 {
		t.Errorf("Int = %d", got)
	}
	if got := r.Int("UNSET", 7, 1, 10); got != 7 {
		t.Errorf("Int default = %d", got)
	}
	if got := r.Duration("WAIT", time.Second, 0, time.Minute); got != 2*time.Second {
		t.Errorf("Duration = %s", got)
	}
	if !r.Bool("FLAG", false) {
		t.Error("Bool = false")
	}
	if got := r.OneOf("LEVEL", "info", "debug", "info"); got != "debug" {
		t.Errorf("OneOf = %q", got)
	}
	if u := r.URL("URL"); u == nil || u.Host != "localhost:6379" {
		t.Errorf("URL = %v", u)
	}
	if r.Err() != nil {
		t.Fatalf("unexpected error: %v", r.Err())
	}

	r.Int("BAD_INT", 1, 1, 10)
	r.Int("BIG", 1, 1, 65535)
	r.Duration("BAD_DUR", time.Second, 0, time.Minute)
	r.Required("MISSING", "the gateway signs nothing without it")
	r.Secret("SHORT", 32, "tokens are signed with it")
	err := r.Err()
	if err == nil {
		t.Fatal("want errors")
	}
	msg := err.Error()
	for _, want := range []string{"BAD_INT", "BIG", "BAD_DUR", "MISSING: is required", "SHORT: is 7 bytes"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "hunter2") {
		t.Errorf("error leaks a secret: %q", msg)
	}
}

func TestListenAddr(t *testing.T) {
	for v, ok := range map[string]bool{":8080": true, "127.0.0.1:0": true, "[::1]:80": true, "8080": false, "host:port": false, ":70000": false} {
		r := New(Map(map[string]string{"ADDR": v}))
		r.ListenAddr("ADDR", ":1")
		if (r.Err() == nil) != ok {
			t.Errorf("ListenAddr(%q): err = %v, want ok=%v", v, r.Err(), ok)
		}
	}
}

func TestURLList(t *testing.T) {
	r := New(Map(map[string]string{"OK": "http://a:1, http://b:2", "BAD": "http://a:1,nope"}))
	if got := r.URLList("OK", ""); got != "http://a:1, http://b:2" || r.Err() != nil {
		t.Errorf("URLList = %q, %v", got, r.Err())
	}
	if r.URLList("BAD", "d"); r.Err() == nil {
		t.Error("a list with a bad URL accepted")
	}
}
