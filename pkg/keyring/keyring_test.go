package keyring

import (
	"strings"
	"testing"
	"time"
)

func TestFormatParseRoundTrip(t *testing.T) {
	until := time.Date(2026, 12, 6, 15, 0, 0, 0, time.UTC)
	in := []Entry{{Value: []byte("a,b@c=d\n")}, {Value: []byte{0, 255, 1}, Until: until}}
	s := Format(in)
	if strings.Contains(s, "a,b") {
		t.Fatalf("value appears as it is: %q", s)
	}
	out, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || string(out[0].Value) != "a,b@c=d\n" || !out[0].Until.IsZero() || string(out[1].Value) != "\x00\xff\x01" || !out[1].Until.Equal(until) {
		t.Fatalf("round trip: %+v", out)
	}
	if act := Active(out, until); len(act) != 1 || !Contains(act, []byte("a,b@c=d\n")) {
		t.Fatalf("active at retirement: %+v", act)
	}
	if act := Active(out, until.Add(-time.Second)); len(act) != 2 {
		t.Fatalf("active before retirement: %+v", act)
	}
}

func TestParseErrorsNameNoValue(t *testing.T) {
	for _, s := range []string{"not base64!", "c2VjcmV0@yesterday"} {
		_, err := Parse(s)
		if err == nil {
			t.Fatalf("%q parsed", s)
		}
		if strings.Contains(err.Error(), "c2VjcmV0") || strings.Contains(err.Error(), "base64!") {
			t.Fatalf("error shows the value: %v", err)
		}
	}
	if e, err := Parse(" , "); err != nil || len(e) != 0 {
		t.Fatalf("empty: %v %v", e, err)
	}
}
