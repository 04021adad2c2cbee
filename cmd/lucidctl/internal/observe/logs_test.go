package observe

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/deploy"
)

func TestReadable(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	st := io.OutStyles()
	at := time.Date(2026, 12, 5, 12, 0, 0, 0, time.Local)
	for _, tc := range []struct{ in, want string }{
		{`{"time":"` + at.Format(time.RFC3339Nano) + `","level":"WARN","msg":"readiness check failing","service":"engine","version":"v1","check":"consensus","error":"no leader yet"}`,
			`12:00:00.000 WARN  readiness check failing check=consensus error="no leader yet"`},
		{`{"level":"INFO","msg":"block sealed","height":42,"txs":0,"a":1,"b":2,"c":3,"d":4}`,
			`INFO  block sealed a=1 b=2 c=3 d=4 height=42 …(+1)`},
		{`{"@level":"warn","@message":"raft: heartbeat timeout","@module":"raft"}`, `raft: heartbeat timeout`},
		{`plain text, not a record`, `plain text, not a record`},
		{`{"broken":`, `{"broken":`},
	} {
		if got := readable(deploy.LogLine{Text: tc.in}, st); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestPrinter(t *testing.T) {
	io, _, _, _ := iostreams.Test()
	var out bytes.Buffer
	p := &printer{out: &out, styles: io.OutStyles(), hosts: true, grep: regexp.MustCompile("keep"), colors: map[string]int{}}
	p.print("pi1", deploy.LogLine{Service: "engine", Text: "keep me"})
	p.print("pi1", deploy.LogLine{Service: "engine", Text: "drop me"})
	p.json = true
	p.print("pi2", deploy.LogLine{Service: "gateway", Stream: "stderr", Text: `{"msg":"keep"}`})
	want := "pi1 engine | keep me\n" + `{"target":"pi2","service":"gateway","stream":"stderr","line":"{\"msg\":\"keep\"}"}` + "\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), "drop") {
		t.Error("--grep let a line through")
	}
}
