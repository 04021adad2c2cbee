package bench

import (
	"bytes"
	"fmt"
	"html/template"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/pickme/lucid/pkg/benchtarget"
)

// chart is one SVG figure of the report.
type chart struct {
	ID, Title string
	SVG       template.HTML
}

var reportPage = template.Must(template.New("report").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lucid bench: {{.Res.Target}}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.missed{color:#b00;font-weight:bold}figure{margin:2em 0}</style>
</head><body>
<h1>Lucid bench</h1>
<p>Target {{.Res.Target}}, started {{.Res.Started.Format "2006-01-02 15:04:05 MST"}}.{{if .Res.Interrupted}} Interrupted: the results cover what ran.{{end}}
Phase 2 targets: {{if .Res.Passed}}all met{{else}}<span class="missed">some missed</span>{{end}}.</p>
<table><tr><th>scenario</th><th>metric</th><th>value</th><th>target</th><th>result</th></tr>
{{range .Res.Scenarios}}{{$s := .}}{{range $k, $v := .Metrics}}{{$cs := index $.Checks $s.Name $k}}{{if $cs}}{{range $cs}}<tr><td>{{$s.Name}}</td><td>{{$k}}</td><td>{{$v}}</td><td>{{.Want}}</td><td{{if not .Pass}} class="missed"{{end}}>{{if .Pass}}ok{{else}}missed{{end}}</td></tr>
{{end}}{{else}}<tr><td>{{$s.Name}}</td><td>{{$k}}</td><td>{{$v}}</td><td></td><td></td></tr>
{{end}}{{end}}{{if .Skipped}}<tr><td>{{.Name}}</td><td colspan="4">skipped: {{.Skipped}}</td></tr>{{end}}{{if .Error}}<tr><td>{{.Name}}</td><td colspan="4" class="missed">{{.Error}}</td></tr>{{end}}{{range $load, $e := .FirstErrors}}<tr><td>{{$s.Name}}</td><td colspan="4" class="missed">first failure ({{$load}}): {{$e}}</td></tr>{{end}}{{end}}
</table>
{{range .Charts}}<figure id="{{.ID}}"><figcaption>{{.Title}}</figcaption>{{.SVG}}</figure>
{{end}}
</body></html>
`))

// writeReport writes DIR/index.html: the results and their charts, drawn
// as inline SVG with gonum/plot, so the page needs nothing online.
func writeReport(dir string, res *Result) error {
	checks := map[string]map[string][]Check{}
	var charts []chart
	for _, s := range res.Scenarios {
		checks[s.Name] = map[string][]Check{}
		for _, c := range s.Checks {
			checks[s.Name][c.Metric] = append(checks[s.Name][c.Metric], c)
		}
		if len(s.latencies) > 0 && s.Name == benchtarget.GatewayLatency {
			p := plot.New()
			p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Gateway latency", "milliseconds", "requests"
			h, err := plotter.NewHist(plotter.Values(s.latencies), 40)
			if err != nil {
				return err
			}
			p.Add(h)
			charts = append(charts, svgChart("latency-histogram", "Latency histogram (open loop)", p))
		}
		if len(s.perSecond) > 0 && s.Name == benchtarget.GatewayThroughput {
			p := plot.New()
			p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Gateway throughput", "second", "requests"
			pts := make(plotter.XYs, len(s.perSecond))
			for i, n := range s.perSecond {
				pts[i].X, pts[i].Y = float64(i), float64(n)
			}
			l, err := plotter.NewLine(pts)
			if err != nil {
				return err
			}
			p.Add(l)
			charts = append(charts, svgChart("throughput-over-time", "Throughput over time", p))
		}
		if len(s.intervals) > 0 {
			p := plot.New()
			p.Title.Text, p.X.Label.Text, p.Y.Label.Text = "Block intervals", "block", "seconds"
			bars, err := plotter.NewBarChart(plotter.Values(s.intervals), vg.Points(8))
			if err != nil {
				return err
			}
			p.Add(bars)
			charts = append(charts, svgChart("block-intervals", "Block intervals", p))
		}
	}
	var b bytes.Buffer
	if err := reportPage.Execute(&b, map[string]any{"Res": res, "Checks": checks, "Charts": charts}); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "index.html"), b.Bytes(), 0o644)
}

func svgChart(id, title string, p *plot.Plot) chart {
	w, err := p.WriterTo(16*vg.Centimeter, 9*vg.Centimeter, "svg")
	if err != nil {
		return chart{ID: id, Title: title, SVG: template.HTML(template.HTMLEscapeString(fmt.Sprint(err)))}
	}
	var b bytes.Buffer
	_, _ = w.WriteTo(&b)
	svg := b.String()
	if i := bytes.Index(b.Bytes(), []byte("<svg")); i > 0 {
		svg = svg[i:] // drop the XML prolog: inline SVG
	}
	return chart{ID: id, Title: title, SVG: template.HTML(svg)} // our own rendering
}
