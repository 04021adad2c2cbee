package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pickme/lucid/internal/testenv"
)

func testServer(t *testing.T, logs io.Writer) *Server {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	cfg := Config{Name: "engine", Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, ServiceKey: []byte(testKey)}
	return New(cfg, NewLogger(logs, slog.LevelDebug, "engine"))
}

// testKey is the service key of the test servers; requests are signed as
// session anchoring, which may call the engine they play.
const testKey = "service-key-of-the-package-tests-0123456789"

func signAsAnchoring(req *http.Request) *http.Request {
	req.Header.Set(HeaderCaller, SignCaller([]byte(testKey), "anchoring", time.Now(), req.Method, req.URL.EscapedPath(), nil))
	return req
}

// signedGet is http.Get, signed.
func signedGet(url string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(signAsAnchoring(req))
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := signAsAnchoring(httptest.NewRequest(http.MethodGet, path, nil))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// result is the outcome of a GET made in the background.
type result struct {
	body string
	err  error
}

// getAsync GETs url in the background and delivers the body when done.
func getAsync(url string) <-chan result {
	res := make(chan result, 1)
	go func() {
		resp, err := signedGet(url)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{string(b), err}
	}()
	return res
}

func TestHealthAndReady(t *testing.T) {
	s := testServer(t, nil)
	if rec := get(t, s.Handler(), "/health"); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"status":"ok"`) {
		t.Fatalf("/health = %d %s", rec.Code, rec.Body)
	}
	s.AddCheck("engine", func(context.Context) error { return nil })
	if rec := get(t, s.Handler(), "/ready"); rec.Code != 200 {
		t.Fatalf("/ready with passing checks = %d %s", rec.Code, rec.Body)
	}
	s.AddCheck("consul", func(context.Context) error { return errors.New("connection refused") })
	rec := get(t, s.Handler(), "/ready")
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/ready with a failing check = %d", rec.Code)
	}
	var rd Readiness
	if err := json.Unmarshal(rec.Body.Bytes(), &rd); err != nil {
		t.Fatal(err)
	}
	if rd.Status != "not_ready" || len(rd.Checks) != 2 || rd.Checks[1].Name != "consul" || rd.Checks[1].Error != "connection refused" {
		t.Errorf("readiness = %+v", rd)
	}
}

// TestPublicReadyHidesDetail: a public listener's /ready names its checks
// and their status, never a detail or an error (internal addresses, error
// text); its log says what failed, once per change. Other services keep
// the details.
func TestPublicReadyHidesDetail(t *testing.T) {
	var logs syncBuffer
	cfg := Config{Name: "gateway", Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, Public: true}
	pub := New(cfg, NewLogger(&logs, slog.LevelDebug, "gateway"))
	internal := testServer(t, nil)
	var failing atomic.Bool
	failing.Store(true)
	for _, s := range []*Server{pub, internal} {
		s.AddDetailedCheck("upstreams", func(context.Context) (string, error) {
			if failing.Load() {
				return "static: engine=http://127.0.0.1:8084", errors.New("dial tcp 127.0.0.1:8085: connection refused")
			}
			return "static: engine=http://127.0.0.1:8084", nil
		})
		s.AddCheck("redis", func(context.Context) error { return nil })
	}
	for range 3 {
		rec := get(t, pub.Handler(), "/ready")
		body := rec.Body.String()
		var rd Readiness
		if err := json.Unmarshal(rec.Body.Bytes(), &rd); err != nil {
			t.Fatal(err)
		}
		if rec.Code != 503 || rd.Status != "not_ready" || len(rd.Checks) != 2 || rd.Checks[0].Name != "upstreams" || rd.Checks[0].Status != "fail" || rd.Checks[1].Status != "ok" {
			t.Errorf("public /ready: %d %s", rec.Code, body)
		}
		if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "refused") || strings.Contains(body, "detail") || strings.Contains(body, `"error"`) {
			t.Errorf("public /ready shows internals: %s", body)
		}
	}
	if rec := get(t, internal.Handler(), "/ready"); !strings.Contains(rec.Body.String(), "engine=http://127.0.0.1:8084") || !strings.Contains(rec.Body.String(), "connection refused") {
		t.Errorf("an internal service's /ready lost its details: %s", rec.Body)
	}
	if n := strings.Count(logs.String(), "readiness check failing"); n != 1 || !strings.Contains(logs.String(), "connection refused") {
		t.Errorf("failure logged %d times, want once with its error:\n%s", n, logs.String())
	}
	failing.Store(false)
	get(t, pub.Handler(), "/ready")
	get(t, pub.Handler(), "/ready")
	if n := strings.Count(logs.String(), "readiness check passing again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
}

// syncBuffer is a log sink for handlers running on several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRequestIDAndErrors(t *testing.T) {
	var logs bytes.Buffer
	s := testServer(t, &logs)
	s.Handle("GET /api/v1/boom", func(http.ResponseWriter, *http.Request) error {
		return errors.New("disk on fire at /var/lib/lucid")
	})
	rec := get(t, s.Handler(), "/api/v1/boom", HeaderRequestID, "abc-123")
	if rec.Code != 500 || rec.Header().Get(HeaderRequestID) != "abc-123" {
		t.Fatalf("code %d, request id %q", rec.Code, rec.Header().Get(HeaderRequestID))
	}
	body := rec.Body.String()
	if !strings.Contains(body, `"code":"LUCID_ERR_5000"`) || !strings.Contains(body, `"request_id":"abc-123"`) {
		t.Errorf("body = %s", body)
	}
	if strings.Contains(body, "disk on fire") {
		t.Errorf("internal detail reached the client: %s", body)
	}
	if !strings.Contains(logs.String(), "disk on fire") || !strings.Contains(logs.String(), `"request_id":"abc-123"`) {
		t.Errorf("log lacks the detail or the request id: %s", logs.String())
	}

	// A malformed incoming ID is replaced, not echoed into logs.
	rec = get(t, s.Handler(), "/health", HeaderRequestID, "bad id\r\nX-Evil: 1")
	if id := rec.Header().Get(HeaderRequestID); len(id) != 32 {
		t.Errorf("request id = %q, want a fresh one", id)
	}
	if rec := get(t, s.Handler(), "/nope"); rec.Code != 404 || !strings.Contains(rec.Body.String(), CodeNotFound) {
		t.Errorf("unknown path = %d %s", rec.Code, rec.Body)
	}
}

func TestPanicRecovery(t *testing.T) {
	var logs bytes.Buffer
	s := testServer(t, &logs)
	s.Handle("GET /panic", func(http.ResponseWriter, *http.Request) error { panic("nil map") })
	rec := get(t, s.Handler(), "/panic")
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), CodeInternal) {
		t.Fatalf("panic = %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "handler panicked") {
		t.Errorf("panic not logged: %s", logs.String())
	}
}

func TestMetricsPerRoute(t *testing.T) {
	s := testServer(t, nil)
	s.Handle("GET /api/v1/blocks/{height}", func(w http.ResponseWriter, _ *http.Request) error {
		WriteJSON(w, 200, map[string]int{"height": 1})
		return nil
	})
	for _, p := range []string{"/api/v1/blocks/1", "/api/v1/blocks/2", "/api/v1/blocks/3"} {
		get(t, s.Handler(), p)
	}
	body := get(t, s.Handler(), "/metrics").Body.String()
	for _, want := range []string{
		`lucid_http_requests_total{code="200",method="GET",route="GET /api/v1/blocks/{height}"} 3`,
		`lucid_http_request_duration_seconds_count{method="GET",route="GET /api/v1/blocks/{height}"} 3`,
		`lucid_build_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, `route="/api/v1/blocks/1"`) {
		t.Error("raw paths leak into route labels")
	}
}

// blockingCollector holds a gather until released: entered says one has
// begun.
type blockingCollector struct {
	desc             *prometheus.Desc
	entered, release chan struct{}
}

func (c *blockingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *blockingCollector) Collect(ch chan<- prometheus.Metric) {
	c.entered <- struct{}{}
	<-c.release
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1)
}

// TestMetricsOneAtATime: a listener, public or internal (anyone may ask
// either), gathers for one /metrics request at a time; metricsQueue more
// wait their turn and are answered, and any beyond those get 503 at once.
func TestMetricsOneAtATime(t *testing.T) {
	for _, public := range []bool{true, false} {
		s := testServer(t, nil)
		if public {
			cfg := Config{Name: "gateway", Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, Public: true}
			s = New(cfg, NewLogger(io.Discard, slog.LevelDebug, cfg.Name))
		}
		c := &blockingCollector{desc: prometheus.NewDesc("test_slow_gather", "A gather that waits.", nil, nil),
			entered: make(chan struct{}, 2+metricsQueue), release: make(chan struct{})}
		s.Registerer().MustRegister(c)
		codes := make(chan int, 2+metricsQueue)
		ask := func() { codes <- get(t, s.Handler(), "/metrics").Code }
		go ask()
		select {
		case <-c.entered: // the first gather runs
		case code := <-codes:
			t.Fatalf("public %v: the first /metrics answered %d without gathering", public, code)
		}
		for range metricsQueue + 1 {
			go ask()
		}
		// All but one wait their turn; the one beyond the queue is
		// refused, and none gathers beside the first.
		select {
		case code := <-codes:
			if code != http.StatusServiceUnavailable {
				t.Errorf("public %v: /metrics beyond the queue: %d, want 503", public, code)
			}
		case <-c.entered:
			close(c.release)
			t.Fatalf("public %v: a second /metrics gathered beside the first", public)
		}
		close(c.release)
		for range metricsQueue + 1 {
			if code := <-codes; code != http.StatusOK {
				t.Errorf("public %v: a /metrics that waited its turn: %d, want 200", public, code)
			}
		}
	}
}

// TestReadyRunsOnce: concurrent /ready calls share one run of the checks
// (each of which may cost a dependency a call), on a public listener and
// an internal one alike (any container on the Pi's network may ask an
// internal one's); all get its answer, and a later call runs the checks
// again.
func TestReadyRunsOnce(t *testing.T) {
	for _, public := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			s := testServer(t, nil)
			if public {
				cfg := Config{Name: "gateway", Addr: "127.0.0.1:0", ShutdownTimeout: 5 * time.Second, Public: true}
				s = New(cfg, NewLogger(io.Discard, slog.LevelDebug, cfg.Name))
			}
			var runs atomic.Int32
			release := make(chan struct{})
			s.AddCheck("dependency", func(context.Context) error {
				runs.Add(1)
				<-release
				return nil
			})
			const callers = 6
			codes := make(chan int, callers)
			for range callers {
				go func() { codes <- get(t, s.Handler(), "/ready").Code }()
			}
			synctest.Wait() // every caller runs the checks or waits for a run
			if n := runs.Load(); n != 1 {
				t.Errorf("public %v: %d concurrent /ready ran the checks %d times, want once", public, callers, n)
			}
			close(release)
			for range callers {
				if code := <-codes; code != http.StatusOK {
					t.Errorf("public %v: /ready %d, want 200", public, code)
				}
			}
			get(t, s.Handler(), "/ready")
			if n := runs.Load(); n != 2 {
				t.Errorf("public %v: a later /ready ran the checks %d times in all, want 2", public, n)
			}
		})
	}
}

// TestGracefulShutdown: a request in flight when the service is told to stop
// finishes and gets its answer; /ready reports draining meanwhile.
func TestGracefulShutdown(t *testing.T) {
	s := testServer(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	s.Handle("GET /slow", func(w http.ResponseWriter, _ *http.Request) error {
		close(started)
		<-release // until the test has seen the service draining
		_, err := io.WriteString(w, "done")
		return err
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	res := getAsync("http://" + ln.Addr().String() + "/slow")
	<-started
	stop()
	testenv.Eventually(t, 5*time.Second, "readiness reports draining while a request is in flight", func() bool {
		return s.Ready(context.Background()).Status == "draining"
	})
	close(release)
	r := <-res
	if r.err != nil || r.body != "done" {
		t.Fatalf("slow request: %q, %v", r.body, r.err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// TestShutdownDeadline: a request that outlives the deadline is cut off and
// Serve reports it rather than hanging.
func TestShutdownDeadline(t *testing.T) {
	s := testServer(t, nil)
	s.cfg.ShutdownTimeout = 200 * time.Millisecond
	started := make(chan struct{})
	s.Handle("GET /stuck", func(_ http.ResponseWriter, r *http.Request) error {
		close(started)
		<-r.Context().Done() // only cutting the connection off ends it
		return nil
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	go func() {
		if resp, err := signedGet("http://" + ln.Addr().String() + "/stuck"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	begin := time.Now()
	stop()
	err := <-served
	if err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Fatalf("Serve = %v, want a cut-off error", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("shutdown took %s", d)
	}
}

func TestProbe(t *testing.T) {
	s := testServer(t, nil)
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(ts.URL, "http://"))
	if err := Probe(context.Background(), ":"+port, "/health", false); err != nil {
		t.Errorf("Probe healthy: %v", err)
	}
	s.AddCheck("engine", func(context.Context) error { return errors.New("down") })
	if err := Probe(context.Background(), ":"+port, "/ready", false); err == nil {
		t.Error("Probe of an unready service succeeded")
	}
	ts.Close()
	if err := Probe(context.Background(), ":"+port, "/health", false); err == nil {
		t.Error("Probe of a closed port succeeded")
	}
}

// TestLongPathsAreCutInTheLog: a request's path is logged up to
// MaxLoggedPath bytes, cut on a character's boundary and marked, so a
// flood of 60 KiB paths writes short records.
func TestLongPathsAreCutInTheLog(t *testing.T) {
	if got := LogPath("/api/v1/blocks/7"); got != "/api/v1/blocks/7" {
		t.Errorf("a short path: %q", got)
	}
	long := "/" + strings.Repeat("é", 30_000) // two bytes each
	got := LogPath(long)
	if !utf8.ValidString(got) || !strings.HasSuffix(got, " bytes)") || len(got) > MaxLoggedPath+32 || !strings.HasPrefix(long, strings.Split(got, "…(+")[0]) {
		t.Errorf("a long path logged as %q", got)
	}
	// Bytes that start no character keep the readable start.
	if got := LogPath("/api/v1/probe" + strings.Repeat("\x80", 400)); !strings.HasPrefix(got, "/api/v1/probe") || len(got) < MaxLoggedPath-utf8.UTFMax {
		t.Errorf("a path of continuation bytes logged as %q", got)
	}
	var logs bytes.Buffer
	s := testServer(t, &logs)
	if rec := get(t, s.Handler(), "/"+strings.Repeat("a", 60<<10)); rec.Code != 404 {
		t.Fatalf("code %d", rec.Code)
	}
	for line := range strings.Lines(logs.String()) {
		if len(line) > 2<<10 {
			t.Errorf("a record of %d bytes for one request: %.300s…", len(line), line)
		}
	}
	if !strings.Contains(logs.String(), "…(+61185 bytes)") {
		t.Errorf("the cut is not marked:\n%.2000s", logs.String())
	}
}
