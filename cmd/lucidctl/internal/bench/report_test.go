package bench

import (
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pickme/lucid/internal/testenv"
	"github.com/pickme/lucid/pkg/benchtarget"
	"github.com/pickme/lucid/pkg/projectconfig"
)

func sampleResult() *Result {
	lat := ScenarioResult{Name: benchtarget.GatewayLatency, Metrics: map[string]float64{"p95_ms": 1.8}, Checks: []Check{{Metric: "p95_ms", Want: "< 10", Value: 1.8, Pass: true}}}
	for i := range 500 {
		lat.latencies = append(lat.latencies, 1+float64(i%40)/10)
	}
	thr := ScenarioResult{Name: benchtarget.GatewayThroughput, Metrics: map[string]float64{"requests_per_second": 9000}, perSecond: []int64{8800, 9100, 9050, 9200, 8900},
		FirstErrors: map[string]string{"requests": "503 LUCID_ERR_5003: no healthy engine instance"}}
	blk := ScenarioResult{Name: benchtarget.BlockInterval, Metrics: map[string]float64{"mean_interval_s": 10}, intervals: []float64{10, 10.01, 9.99, 10, 10}}
	return &Result{Target: "http://127.0.0.1:8080", Started: time.Now(), Passed: true, Scenarios: []ScenarioResult{thr, lat, blk}}
}

// TestReportRendersInChromium opens the report in headless Chromium: the
// three charts are in the rendered page, and a screenshot is drawn.
func TestReportRendersInChromium(t *testing.T) {
	chromium := testenv.Tool(t, "chromium", "LUCID_CHROMIUM_BIN")
	dir := t.TempDir()
	if err := writeReport(dir, sampleResult()); err != nil {
		t.Fatal(err)
	}
	page := "file://" + filepath.Join(dir, "index.html")
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir()}
	dom, err := exec.Command(chromium, append(args, "--dump-dom", page)...).Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom: %v", err)
	}
	if !strings.Contains(string(dom), "<td>"+benchtarget.GatewayThroughput+"</td><td colspan=\"4\" class=\"missed\">first failure (requests): 503 LUCID_ERR_5003") {
		t.Error("the rendered page does not name the first failure")
	}
	for _, id := range []string{"latency-histogram", "throughput-over-time", "block-intervals"} {
		i := strings.Index(string(dom), `id="`+id+`"`)
		if i < 0 || !strings.Contains(string(dom[i:]), "<svg") {
			t.Errorf("the rendered page lacks the %s chart", id)
		}
	}
	shot := filepath.Join(dir, "report.png")
	if out, err := exec.Command(chromium, append(args, "--screenshot="+shot, "--window-size=1000,1800", page)...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot: %v\n%s", err, out)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	// Drawn charts: far from one flat color.
	colors := map[uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colors[r>>8<<16|g>>8<<8|bl>>8] = true
		}
	}
	if len(colors) < 3 {
		t.Errorf("the screenshot has %d colors: nothing drawn", len(colors))
	}
}

// TestGoals: lucid.yaml's goals are checked beside the Phase 2 targets.
func TestGoals(t *testing.T) {
	b := &bench{goals: projectconfig.BenchGoals{"gateway_rps": 20000, "query_p95_ms": 5}}
	thr := ScenarioResult{Name: benchtarget.GatewayThroughput, Metrics: map[string]float64{"requests_per_second": 9000}}
	b.goalChecks(&thr)
	q := ScenarioResult{Name: benchtarget.QueryLatency, Metrics: map[string]float64{"block_p95_ms": 2, "anchor_p95_ms": 7}}
	b.goalChecks(&q)
	if len(thr.Checks) != 1 || thr.Checks[0].Pass || !strings.Contains(thr.Checks[0].Want, "lucid.yaml") {
		t.Errorf("throughput goal: %+v", thr.Checks)
	}
	if len(q.Checks) != 2 || !q.Checks[0].Pass || q.Checks[1].Pass {
		t.Errorf("query goals: %+v", q.Checks)
	}
}
