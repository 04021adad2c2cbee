package observe

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pickme/lucid/cmd/lucidctl/internal/cli"
	"github.com/pickme/lucid/cmd/lucidctl/internal/fleet"
	"github.com/pickme/lucid/cmd/lucidctl/internal/iostreams"
	"github.com/pickme/lucid/pkg/deploy"
)

// LogsOptions are the inputs of `lucidctl logs --target`.
type LogsOptions struct {
	Env      *cli.Env
	Fleet    *fleet.Flags
	Services []string
	Follow   bool
	// Since leaves out older lines (0: all).
	Since time.Duration
	Tail  int
	// Grep keeps only lines that match (nil: all).
	Grep *regexp.Regexp
	// Raw prints each line as the service wrote it.
	Raw bool
}

// LogLineDoc is one line of `logs --target --json`, one object per line.
type LogLineDoc struct {
	Target  string    `json:"target"`
	Service string    `json:"service"`
	Time    time.Time `json:"time,omitzero"`
	Stream  string    `json:"stream"`
	// Line is the line as the service wrote it (a JSON log record is a
	// string here, not an object).
	Line string `json:"line"`
}

// RunLogs prints the selected services' logs of every selected host,
// merged as they arrive; with Follow until interrupted.
func RunLogs(ctx context.Context, opts *LogsOptions) error {
	env := opts.Env
	fl, err := opts.Fleet.Connect(ctx, env)
	if err != nil {
		return err
	}
	defer fl.Close()
	if s := fl.SkippedSummary(); s != "" {
		fmt.Fprintln(env.IO.ErrOut, s)
	}
	p := &printer{out: env.IO.Out, styles: env.IO.OutStyles(), json: env.JSON, raw: opts.Raw, grep: opts.Grep,
		hosts: len(fl.Hosts)+len(fl.Unreachable) > 1, colors: map[string]int{}}
	lo := deploy.LogOptions{Services: opts.Services, Follow: opts.Follow, Tail: opts.Tail}
	if opts.Since > 0 {
		lo.Since = time.Now().Add(-opts.Since)
	}
	err = fl.Each(ctx, func(ctx context.Context, h *fleet.Host) error {
		d, err := deploy.New(h.DeployConfig())
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Logs(ctx, lo, func(l deploy.LogLine) { p.print(h.Name, l) })
	})
	if ctx.Err() != nil {
		return nil // Ctrl-C is how -f ends
	}
	return err
}

// printer writes log lines of several hosts and services, one at a time.
type printer struct {
	mu     sync.Mutex
	out    io.Writer
	styles *iostreams.Styles
	json   bool
	raw    bool
	grep   *regexp.Regexp
	hosts  bool
	colors map[string]int
}

func (p *printer) print(host string, l deploy.LogLine) {
	if p.grep != nil && !p.grep.MatchString(l.Text) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		b, err := json.Marshal(LogLineDoc{Target: host, Service: l.Service, Time: l.Time, Stream: l.Stream, Line: l.Text})
		if err == nil {
			fmt.Fprintf(p.out, "%s\n", b)
		}
		return
	}
	name := l.Service
	if p.hosts {
		name = host + " " + l.Service
	}
	i, ok := p.colors[name]
	if !ok {
		i = len(p.colors)
		p.colors[name] = i
	}
	text := l.Text
	if !p.raw {
		text = readable(l, p.styles)
	}
	fmt.Fprintf(p.out, "%s %s\n", p.styles.Pick(i).Render(fmt.Sprintf("%-9s |", name)), text)
}

// skipKeys are a record's fields readable leaves out: shown already, or
// the same on every line.
var skipKeys = []string{"time", "level", "msg", "service", "version", "commit", "go_version"}

// maxKeys is how many of a record's other fields readable shows.
const maxKeys = 5

// readable renders a JSON log record (log/slog's JSONHandler) as time,
// level, message and a few key=value; any other line is left as it is.
// Control characters are escaped (iostreams.Safe), in a record's strings
// too, where JSON escaped them: a client chooses the path an access log
// line quotes (a request for /%1b]52;c;...).
func readable(l deploy.LogLine, st *iostreams.Styles) string {
	if !strings.HasPrefix(l.Text, "{") {
		return iostreams.Safe(l.Text)
	}
	dec := json.NewDecoder(strings.NewReader(l.Text))
	dec.UseNumber()
	var rec map[string]any
	if err := dec.Decode(&rec); err != nil {
		return iostreams.Safe(l.Text)
	}
	t := l.Time
	if s, ok := rec["time"].(string); ok {
		if pt, err := time.Parse(time.RFC3339Nano, s); err == nil {
			t = pt
		}
	}
	level, _ := rec["level"].(string)
	msg, _ := rec["msg"].(string)
	if msg == "" {
		msg, _ = rec["@message"].(string) // hclog (Raft)
	}
	var keys []string
	for k := range rec {
		if !slices.Contains(skipKeys, k) && !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	if !t.IsZero() {
		b.WriteString(st.Dim.Render(t.Local().Format("15:04:05.000")) + " ")
	}
	if level != "" {
		lv := fmt.Sprintf("%-5s", strings.ToUpper(level))
		switch strings.ToUpper(level) {
		case "ERROR":
			lv = st.Error.Render(lv)
		case "WARN":
			lv = st.Warning.Render(lv)
		case "DEBUG":
			lv = st.Dim.Render(lv)
		}
		b.WriteString(lv + " ")
	}
	b.WriteString(iostreams.Safe(msg))
	for i, k := range keys {
		if i == maxKeys {
			fmt.Fprintf(&b, " …(+%d)", len(keys)-maxKeys)
			break
		}
		fmt.Fprintf(&b, " %s=%s", st.Dim.Render(iostreams.Safe(k)), value(rec[k]))
	}
	return b.String()
}

// value is a field's value as key=value shows it: quoted when it has
// spaces, compact JSON when it is an object or a list.
func value(v any) string {
	switch x := v.(type) {
	case string:
		if x == "" || strings.ContainsAny(x, " \t\"=") {
			return fmt.Sprintf("%q", x) // which escapes control characters too
		}
		return iostreams.Safe(x)
	case json.Number:
		return x.String()
	case nil:
		return "null"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return iostreams.Safe(fmt.Sprint(v))
	}
	return iostreams.Safe(string(b)) // JSON escapes C0, not DEL or C1
}
