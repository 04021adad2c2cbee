package observe

import (
	"bytes"
	"encoding/json"
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

// TestHostTextCannotDriveTheTerminal: control characters a client, a
// service or a host chose (an access log's path from a request for
// /%1b]52;c;..., a release record's version, a container's state) reach
// the text output escaped, never as the escape sequences they would be.
func TestHostTextCannotDriveTheTerminal(t *testing.T) {
	const osc52 = "\x1b]52;c;Y3Vy\a"
	io, _, _, _ := iostreams.Test()
	var out bytes.Buffer
	p := &printer{out: &out, styles: io.OutStyles(), colors: map[string]int{}}
	rec, err := json.Marshal(map[string]any{"level": "INFO", "msg": "request\x1b[2K", "path": "/" + osc52, "n\x1bk": 1, "obj": map[string]string{"x": "\u009b31m"}})
	if err != nil {
		t.Fatal(err)
	}
	p.print("pi", deploy.LogLine{Service: "gateway", Text: string(rec)})
	p.print("pi", deploy.LogLine{Service: "consul", Text: "raw " + osc52})
	doc := StatusDoc{Hosts: []HostDoc{{Target: "pi", Reachable: true, HostStatus: &deploy.HostStatus{
		Target: "pi", Release: &deploy.Release{ID: "r1", Version: "v1\x1b[1A\x1b[2Kpi2  healthy", By: "ops"},
		Services: []deploy.ServiceState{{Service: "engine", State: "running\x1b]0;owned\a"}}, Problems: []string{"disk\x1b[31m"},
		Unknown: map[string]string{deploy.FigureDocker: "\x1b[8m"},
	}}}}
	printStatus(&out, io.OutStyles(), doc, time.Now())
	for _, c := range []string{"\x1b", "\a", "\u009b"} {
		if strings.Contains(out.String(), c) {
			t.Errorf("the text output holds %q:\n%q", c, out.String())
		}
	}
	if !strings.Contains(out.String(), `/\x1b]52;c;Y3Vy\x07`) || !strings.Contains(out.String(), `v1\x1b[1A\x1b[2Kpi2`) {
		t.Errorf("the escaped text is not shown as such:\n%s", out.String())
	}
}
